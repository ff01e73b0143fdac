"""What the fleet is doing, for people and scripts: the snapshot (snapshot.py) behind `ultra status` and the
status page."""
