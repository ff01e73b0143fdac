"""The fleet's shared state read in one place: one reader per part (mode, components, breakers, queues,
parked jobs, admission, job counters, queue statistics, the job table, the cache), assembled by
``read_fleet`` into one typed ``FleetSnapshot`` under one deadline. /metrics, the status page, its JSON and
`ultra status` render that snapshot; none of them reads Redis or SQL itself."""

from __future__ import annotations

from ultra_tasks.fleet.read import read_fleet
from ultra_tasks.fleet.snapshot import FleetSnapshot, Part, Store, Unavailable

__all__ = ["FleetSnapshot", "Part", "Store", "Unavailable", "read_fleet"]
