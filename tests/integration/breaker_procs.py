"""Child processes for the multi-process breaker tests: ``python breaker_procs.py SCENARIO JSON``.

Each child signals readiness (INCR ready key), waits for the go key so all start together, runs its
scenario against a CircuitBreaker, and prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import redis

from ultra_tasks import CircuitBreaker, CircuitOpenException
from ultra_tasks.config import get_settings


class Boom(Exception):
    pass


def _barrier(client: redis.Redis, run: str) -> None:
    client.incr(f"test:{run}:ready")
    deadline = time.monotonic() + 60
    while not client.exists(f"test:{run}:go"):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.002)


def fail(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """Make ``calls`` failing calls; count how many ran and how many were refused."""
    ran = refused = 0
    for _ in range(cfg["calls"]):
        try:
            with breaker:
                ran += 1
                time.sleep(cfg.get("hold", 0))
                raise Boom()
        except Boom:
            pass
        except CircuitOpenException:
            refused += 1
        time.sleep(cfg.get("gap", 0))
    return {"ran": ran, "refused": refused}


def probe(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """``threads`` callers at once; each holds its call for ``hold`` seconds if admitted."""
    admitted: list[int] = []
    refused: list[int] = []
    start = threading.Event()

    def caller(i: int) -> None:
        start.wait()
        try:
            with breaker:
                admitted.append(i)
                time.sleep(cfg["hold"])
        except CircuitOpenException:
            refused.append(i)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(cfg["threads"])]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join()
    return {"admitted": len(admitted), "refused": len(refused)}


def hold_success(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """Start one call, report it started, hold it for ``hold`` seconds, then succeed."""
    client = redis.Redis.from_url(get_settings().redis_url)
    with breaker:
        client.set(f"test:{cfg['run']}:started", 1)
        time.sleep(cfg["hold"])
    return {"done": True}


def watch(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """Call a cheap function in a loop until refused; report when (epoch seconds)."""
    deadline = time.monotonic() + cfg["max_s"]
    calls = 0
    while time.monotonic() < deadline:
        try:
            with breaker:
                calls += 1
        except CircuitOpenException:
            return {"refused_at": time.time(), "calls": calls}
        time.sleep(0.001)
    return {"refused_at": None, "calls": calls}


def watch_unsubscribed(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """``watch`` as a process whose events subscription is down: nothing is pushed to it."""
    listener = breaker._trip_listener
    listener._forget = lambda name: None
    listener.subscribed.clear()
    return watch(cfg, breaker)


def probe_windows(cfg: dict[str, Any], breaker: CircuitBreaker) -> dict[str, Any]:
    """Keep calling for ``max_s`` seconds; each admitted call holds ``hold`` seconds and succeeds. Report
    the (start, end) of every call admitted while the breaker was not closed (a probe), epoch seconds."""
    deadline = time.monotonic() + cfg["max_s"]
    windows: list[tuple[float, float]] = []
    while time.monotonic() < deadline:
        try:
            with breaker:
                if breaker.probing:
                    start = time.time()
                    time.sleep(cfg["hold"])
                    windows.append((start, time.time()))
        except CircuitOpenException:
            pass
        time.sleep(cfg.get("gap", 0.02))
    return {"windows": windows}


SCENARIOS = {
    "fail": fail,
    "probe": probe,
    "hold_success": hold_success,
    "watch": watch,
    "watch_unsubscribed": watch_unsubscribed,
    "probe_windows": probe_windows,
}


def main() -> None:
    scenario, cfg = sys.argv[1], json.loads(sys.argv[2])
    breaker = CircuitBreaker(cfg["name"], **cfg.get("breaker", {}))
    breaker.add_listener(lambda name, old, new: print(json.dumps({"transition": [old, new]}), flush=True))
    client = redis.Redis.from_url(get_settings().redis_url)
    if not cfg.get("no_barrier"):
        _barrier(client, cfg["run"])
    print(json.dumps({"result": SCENARIOS[scenario](cfg, breaker)}), flush=True)


if __name__ == "__main__":
    main()
