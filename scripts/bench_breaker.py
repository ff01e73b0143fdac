#!/usr/bin/env python
"""Cost of a guarded successful call on the closed path, in Redis PING-equivalents, side by side in one
run on the same Redis: ultra-tasks' shared CircuitBreaker against pybreaker 1.4 with CircuitRedisStorage.

Also shows the price of the cheap closed path: how long a trip made through one breaker instance takes to
reach another instance of the same breaker (each has its own cache, as two worker processes would), which
must stay within the configured sync interval.  Goal: <= 0.5 PINGs per call and >= 3x cheaper than
pybreaker, with the propagation bound met.  Bounded; loopback only.
Usage: scripts/bench_breaker.py [--calls 20000] [--redis-url redis://127.0.0.1:6379/11]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    args = parser.parse_args()
    os.environ["REDIS_URL"] = args.redis_url
    os.environ.setdefault("ULTRA_REDIS_NAMESPACE", "ultra-bench")

    import logging

    logging.getLogger("ultra_tasks").setLevel(logging.ERROR)  # the trips below are on purpose
    import pybreaker
    import redis

    from ultra_tasks import CircuitBreaker, CircuitOpenException

    raw = redis.Redis.from_url(args.redis_url)
    raw.flushdb()

    def noop() -> None:
        return None

    ours = CircuitBreaker(f"bench-{uuid.uuid4().hex[:6]}", failure_threshold=5, reset_timeout=60)
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

    # trip propagation: instance B (its own cache, like another worker) calls in a loop; A trips the breaker
    name = f"bench-prop-{uuid.uuid4().hex[:6]}"
    a = CircuitBreaker(name, failure_threshold=3, reset_timeout=60)
    b = CircuitBreaker(name, failure_threshold=3, reset_timeout=60)
    seen: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                b.call(noop)
            except CircuitOpenException:
                seen.append(time.monotonic())
                return
            time.sleep(0.0005)

    delays = []
    for _ in range(5):
        a.reset()
        seen.clear()
        stop.clear()
        thread = threading.Thread(target=watch)
        thread.start()
        time.sleep(0.3)
        for _ in range(3):
            with contextlib.suppress(ZeroDivisionError):
                a.call(lambda: 1 / 0)
        tripped = time.monotonic()
        thread.join(10)
        stop.set()
        delays.append(seen[0] - tripped if seen else float("inf"))
    print(
        f"trip propagation to another instance: max {max(delays) * 1000:.0f} ms over 5 trips "
        f"(bound: CIRCUIT_BREAKER_SYNC_INTERVAL = {b.sync_interval * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
