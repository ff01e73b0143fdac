#!/usr/bin/env python
"""Cost of a guarded successful call on the closed path, in Redis PING-equivalents, side by side in one
run on the same Redis: ultra-tasks' shared CircuitBreaker against pybreaker 1.4 with CircuitRedisStorage.

Also shows how fast a trip reaches another process: a watcher process calls through its own instance of
the breaker (its verdict cached for 10 s, so only the pushed transition can stop it early) while this
process trips it, --trips times; p50 and p99 of the delay from the trip (Redis' clock, in the published
event) to the watcher's first refusal.

The closed path's Redis round trips per call are counted by the breaker's own client (other clients of
the same Redis do not count), in a tight loop and at paced rates (--rates, calls per second for
--paced-s seconds each): a worker calls a provider a few times a second, so a verdict refreshed on a
timer costs it far more per call than a tight loop shows.  Goals: closed path <= 0.05 Redis round trips
per call at every rate and >= 3x cheaper than pybreaker; trip propagation p99 <= 20 ms.  Bounded;
loopback only.  It flushes the Redis database it is given first: not one a test run is using.
Usage: scripts/bench_breaker.py [--calls 20000] [--trips 50] [--rates 5,50] [--paced-s 25]
       [--redis-url redis://127.0.0.1:6379/11]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
from collections.abc import Callable


def _per_call(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def _commands(client: object, fn: Callable[[], object], n: int) -> float:
    before = int(client.info("stats")["total_commands_processed"])  # type: ignore[attr-defined]
    for _ in range(n):
        fn()
    after = int(client.info("stats")["total_commands_processed"])  # type: ignore[attr-defined]
    return (after - before - 1) / n  # the INFO call itself counts once


def _round_trips_paced(breaker: object, counter: list[int], rate: float, seconds: float) -> float:
    """Redis round trips per call of ``breaker.call`` made ``rate`` times a second for ``seconds``."""
    period, n = 1.0 / rate, max(1, int(rate * seconds))
    before = counter[0]
    started = time.monotonic()
    for i in range(n):
        breaker.call(lambda: None)  # type: ignore[attr-defined]
        pause = started + (i + 1) * period - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return (counter[0] - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trips", type=int, default=50)
    parser.add_argument("--rates", default="5,50", help="paced closed-path rates, calls per second")
    parser.add_argument(
        "--paced-s", type=float, default=25.0, help="seconds at each paced rate (past a verdict's trust)"
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    args = parser.parse_args()
    os.environ["REDIS_URL"] = args.redis_url
    os.environ.setdefault("ULTRA_REDIS_NAMESPACE", "ultra-bench")

    import logging

    logging.getLogger("ultra_tasks").setLevel(logging.ERROR)  # the trips below are on purpose
    import pybreaker
    import redis

    from ultra_tasks import CircuitBreaker

    raw = redis.Redis.from_url(args.redis_url)
    raw.flushdb()
    sent = [0]  # commands the breaker's own client sent: its round trips

    class CountingRedis(redis.Redis):
        def execute_command(self, *a: object, **k: object) -> object:
            sent[0] += 1
            return super().execute_command(*a, **k)

    counted = CountingRedis.from_url(args.redis_url, socket_timeout=2)

    def noop() -> None:
        return None

    ours = CircuitBreaker(
        f"bench-{uuid.uuid4().hex[:6]}", failure_threshold=5, reset_timeout=60, redis_client=counted
    )
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, raw, namespace=f"pyb-{uuid.uuid4().hex[:6]}"
    )
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)

    sides: dict[str, Callable[[], object]] = {
        "redis PING": raw.ping,
        "ultra-tasks CircuitBreaker": lambda: ours.call(noop),
        "pybreaker 1.4 + CircuitRedisStorage": lambda: theirs.call(noop),
    }
    for fn in sides.values():
        _per_call(fn, 500)  # warm-up: connections, script load
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):  # interleaved rounds: drift on a shared machine hits every side alike
        for name, fn in sides.items():
            times[name].append(_per_call(fn, args.calls))
    best = {name: min(values) for name, values in times.items()}
    commands = {name: _commands(raw, fn, min(args.calls, 5000)) for name, fn in sides.items()}
    before = sent[0]
    tight = min(args.calls, 5000)
    _per_call(sides["ultra-tasks CircuitBreaker"], tight)
    own_tight = (sent[0] - before) / tight
    paced = {
        float(r): _round_trips_paced(ours, sent, float(r), args.paced_s) for r in args.rates.split(",") if r
    }
    ping = best["redis PING"]

    print(
        f"closed-path guarded call, {args.calls} calls x {args.rounds} rounds (best), same Redis, one thread"
    )
    print(f"  {'':38} {'us/call':>9} {'PINGs/call':>11} {'Redis cmds/call':>16}")
    for name in sides:
        print(f"  {name:38} {best[name] * 1e6:9.2f} {best[name] / ping:11.3f} {commands[name]:16.3f}")
    ratio = best["pybreaker 1.4 + CircuitRedisStorage"] / best["ultra-tasks CircuitBreaker"]
    print(
        f"  ultra-tasks: {best['ultra-tasks CircuitBreaker'] / ping:.3f} PINGs per call (goal <= 0.5); "
        f"pybreaker costs {ratio:.1f}x as much (goal >= 3)"
    )

    # trip propagation: a watcher process (its own cache, like another worker) calls in a loop and reports
    # when it was first refused; this process trips the breaker; the delay is measured on Redis' clock
    import json
    import subprocess
    import sys

    delays: list[float] = []
    for _ in range(args.trips):
        name = f"bench-prop-{uuid.uuid4().hex[:6]}"
        options = {
            "failure_threshold": 3,
            "reset_timeout": 60,
            "sync_interval": 10,
            "pushed_sync_interval": 10,
        }
        watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, name, json.dumps(options)],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "watching"
        # one failure trips it: the watcher's successes reset a count of consecutive failures
        a = CircuitBreaker(name, **{**options, "failure_threshold": 1})
        seconds, micros = raw.time()
        tripped = seconds + micros / 1e6  # just before the tripping call: the delay is not flattered
        with contextlib.suppress(ZeroDivisionError):
            a.call(lambda: 1 / 0)
        refused = float(watcher.stdout.readline())
        watcher.wait(10)
        delays.append(max(0.0, refused - tripped))
    delays.sort()
    p50, p99 = delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"trip propagation to another process, {len(delays)} trips (its cached verdict trusted for 10 s): "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms "
        "(goal: p99 <= 20 ms)"
    )
    print(
        f"closed path, Redis round trips per call (the breaker's own client; goal <= 0.05 at every rate): "
        f"tight loop {own_tight:.4f}; "
        + "; ".join(f"{rate:g} calls/s {cost:.4f}" for rate, cost in paced.items())
        + f" (verdict trusted {ours.pushed_sync_interval:g} s while subscribed, {ours.sync_interval:g} s not)"
    )


# The watcher: subscribes (through its breaker), says so, calls until refused, prints Redis' time then.
WATCHER = """
import json, sys, time
import redis
from ultra_tasks import CircuitBreaker, CircuitOpenException
name, options = sys.argv[1], json.loads(sys.argv[2])
breaker = CircuitBreaker(name, **options)
breaker.call(lambda: None)
breaker._trip_listener.subscribed.wait(10)
print("watching", flush=True)
client = redis.Redis.from_url(__import__("os").environ["REDIS_URL"])
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        breaker.call(lambda: None)
    except CircuitOpenException:
        s, us = client.time()
        print(s + us / 1e6, flush=True)
        break
    time.sleep(0.0002)
"""


if __name__ == "__main__":
    main()
