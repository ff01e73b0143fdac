#!/usr/bin/env python
"""Hit latency of each cache level, side by side in one run with a plain dict lookup and a raw Redis GET of
the same value on the same Redis.  Goals: a memory hit within 20 us; a Redis hit within 1.3x a raw GET.
Bounded; loopback only.  Usage: scripts/bench_cache.py [--n 20000] [--redis-url redis://127.0.0.1:6379/11]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable


def _best_us(fn: Callable[[], object], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    args = parser.parse_args()
    os.environ["REDIS_URL"] = args.redis_url
    os.environ.setdefault("ULTRA_REDIS_NAMESPACE", "ultra-bench")

    import redis

    from ultra_tasks import DistributedCache
    from ultra_tasks.cache.base import encode
    from ultra_tasks.keys import cache_entry

    # a typical cached LLM answer
    value = {
        "text": "echo: " + "word " * 60,
        "model": "gpt-4o",
        "provider": "openai",
        "usage": {"input_tokens": 60, "output_tokens": 61, "total_tokens": 121},
        "finish_reason": "stop",
    }
    tmp = tempfile.mkdtemp(prefix="ultra-bench-cache-")
    memory = DistributedCache(memory_cache_size=100, listen_for_invalidations=False)
    disk = DistributedCache(memory_cache_size=0, disk_cache_dir=tmp, listen_for_invalidations=False)
    red = DistributedCache(memory_cache_size=0, redis_url=args.redis_url, listen_for_invalidations=False)
    for cache in (memory, disk, red):
        cache.put_sync("answer", value, "bench", ttl_seconds=3600)
    raw_client = redis.Redis.from_url(args.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    raw_key = cache_entry("bench", "answer")
    plain = {"bench:answer": encode(value, 3600)}
    assert memory.get_sync("answer", "bench") == value
    assert disk.get_sync("answer", "bench") == value
    assert red.get_sync("answer", "bench") == value

    sides: dict[str, Callable[[], object]] = {
        "plain dict lookup": lambda: plain.get("bench:answer"),
        "memory level hit": lambda: memory.get_sync("answer", "bench"),
        "disk level hit": lambda: disk.get_sync("answer", "bench"),
        "raw Redis GET": lambda: raw_client.get(raw_key),
        "Redis level hit": lambda: red.get_sync("answer", "bench"),
    }
    for fn in sides.values():
        _best_us(fn, 500, 1)  # warm-up
    results = {name: _best_us(fn, args.n, args.rounds) for name, fn in sides.items()}
    print(
        f"cache hit latency, {args.n} reads x {args.rounds} rounds (best round), value of "
        f"{len(plain['bench:answer'])} bytes"
    )
    for name, us in results.items():
        print(f"  {name:20} {us:9.2f} us")
    print(f"  memory hit: {results['memory level hit']:.2f} us (goal <= 20 us)")
    print(f"  Redis hit / raw GET: {results['Redis level hit'] / results['raw Redis GET']:.3f} (goal <= 1.3)")
    for cache in (memory, disk, red):
        cache.close()


if __name__ == "__main__":
    main()
