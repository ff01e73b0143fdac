#!/usr/bin/env python
"""What the HTTP API adds to a chat completion, side by side in one run.

The same request (a fresh prompt each time, so no cache answers it) sent two ways with the official
``openai`` SDK: through `ultra api` (authentication, a job recorded in SQL, the queue, a Celery worker that
calls the fake provider through the SDK and records the result, the API's waiter, the ChatCompletion) and
straight to the fake provider. With 1 and with 50 concurrent clients, sides alternating in rounds so drift
on a shared machine hits both alike: p50 and p99 latency of each side, the milliseconds the API adds at
each, and requests per second sustained. Goal: at most 15 ms added at p50 with one client.

Runs are bounded; everything targets loopback (a SQLite file and the Redis of BENCH_REDIS_URL, flushed).
Usage: scripts/bench_api.py [--requests 300] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import _cpu_s, _free_port, _start, _start_worker, _stop

MODEL = "gpt-4o-mini"


def _setup_env(tmp: Path) -> None:
    os.environ.update(
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        ULTRA_VAR_DIR=str(tmp),
        ULTRA_REDIS_NAMESPACE="ultra-bench-api",
        FAKE_PROVIDER_URL=f"http://127.0.0.1:{_free_port()}",
        USE_FAKE_PROVIDER="1",
        LOG_LEVEL="WARNING",
        ULTRA_SECRET_KEY=uuid.uuid4().hex * 2,
    )
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATABASE_URL"):
        os.environ.pop(name, None)
    if "BENCH_DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not come up")


def run(call: Callable[[], Any], n: int, clients: int) -> tuple[list[tuple[float, Any]], float]:
    """``n`` calls from ``clients`` threads: each call's (latency in ms, answer) and the calls per second."""

    def timed(_: int) -> tuple[float, Any]:
        start = time.perf_counter()
        answer = call()
        return (time.perf_counter() - start) * 1000, answer

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(timed, range(n)))
    return results, n / (time.perf_counter() - start)


def job_ms(job_ids: list[str]) -> dict[str, float]:
    """Each job's time from recorded to finished (its SQL row), in ms: the job path's share of a request."""
    from sqlalchemy import select

    from ultra_tasks.db.engine import transaction
    from ultra_tasks.jobs.records import jobs

    out: dict[str, float] = {}
    for start in range(0, len(job_ids), 500):
        with transaction() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.created_at, jobs.c.finished_at).where(
                    jobs.c.id.in_(job_ids[start : start + 500])
                )
            ).all()
        out.update(
            {r.id: (r.finished_at - r.created_at).total_seconds() * 1000 for r in rows if r.finished_at}
        )
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (latencies pooled)")
    parser.add_argument("--concurrency", type=int, default=16, help="worker threads")
    parser.add_argument("--clients", default="1,50", help="concurrent clients to measure, comma-separated")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ultra-bench-api-"))
    _setup_env(tmp)
    import openai
    import redis

    from ultra_tasks.api.tenants import create_key
    from ultra_tasks.db.migrate import upgrade_schema

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    upgrade_schema()
    fake_url = os.environ["FAKE_PROVIDER_URL"]
    api_port = _free_port()
    procs = [
        _start(
            [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", fake_url.rsplit(":", 1)[1]],
            tmp / "fake.log",
        )
    ]
    try:
        _wait_http(fake_url + "/healthz", procs[0], "the fake provider")
        worker = _start_worker(args.concurrency, tmp)
        procs.append(worker)
        api = _start(
            [sys.executable, "-m", "ultra_tasks.cli", "api", "--port", str(api_port)], tmp / "api.log"
        )
        procs.append(api)
        _wait_http(f"http://127.0.0.1:{api_port}/openapi.json", api, "the API")
        key = create_key("bench")[1]
        through_api = openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{api_port}/v1", max_retries=0)
        direct = openai.OpenAI(api_key="bench", base_url=fake_url + "/v1", max_retries=0)

        def call(client: openai.OpenAI) -> Callable[[], object]:
            def one() -> object:
                prompt = f"bench {uuid.uuid4().hex}"
                return client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16
                )

            return one

        sides = {"API": call(through_api), "direct": call(direct)}
        for fn in sides.values():  # warm-up: imports, pools, SDK clients, the worker's first jobs
            run(fn, 40, 4)
        print(
            f"chat completion through `ultra api` (queue, worker c={args.concurrency}, SQL record) vs "
            f"straight to the fake provider, {args.requests} requests per side x {args.rounds} rounds, "
            f"database {os.environ.get('DATABASE_URL', 'SQLite (embedded default)').split('@')[-1]}"
        )
        for clients in (int(c) for c in args.clients.split(",")):
            lat: dict[str, list[float]] = {s: [] for s in sides}
            rps: dict[str, list[float]] = {s: [] for s in sides}
            own: list[float] = []  # a request's time outside its job (HTTP, auth, submit's return, waiter)
            cpu = {"API process": 0.0, "worker": 0.0}
            for _ in range(args.rounds):
                for side, fn in sides.items():
                    before = {"API process": _cpu_s(api.pid), "worker": _cpu_s(worker.pid)}
                    results, rate = run(fn, args.requests, clients)
                    if side == "API":
                        for name, pid in (("API process", api.pid), ("worker", worker.pid)):
                            start_cpu, end_cpu = before[name], _cpu_s(pid)
                            if start_cpu is not None and end_cpu is not None:
                                cpu[name] += end_cpu - start_cpu
                    lat[side] += [ms for ms, _ in results]
                    rps[side].append(rate)
                    if side == "API":
                        inside = job_ms([answer.id for _, answer in results])
                        own += [ms - inside[a.id] for ms, a in results if a.id in inside]
            api_l, dir_l = lat["API"], lat["direct"]
            print(f"  {clients} concurrent client(s)")
            print(f"    {'':8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
            for side in sides:
                print(
                    f"    {side:8} {pct(lat[side], 0.5):8.1f} {pct(lat[side], 0.99):8.1f} "
                    f"{statistics.median(rps[side]):8.1f}"
                )
            added50 = pct(api_l, 0.5) - pct(dir_l, 0.5)
            added99 = pct(api_l, 0.99) - pct(dir_l, 0.99)
            goal = "  (goal <= 15 ms)" if clients == 1 else ""
            print(f"    added by the API: p50 {added50:+.1f} ms{goal}, p99 {added99:+.1f} ms")
            served = args.requests * args.rounds
            print(
                "    CPU per API request: "
                + ", ".join(f"{name} {seconds / served * 1000:.2f} ms" for name, seconds in cpu.items())
            )
            if own:
                print(
                    "    of which outside the job (recorded -> finished in SQL): "
                    f"p50 {pct(own, 0.5):.1f} ms, p99 {pct(own, 0.99):.1f} ms"
                )
    finally:
        for proc in reversed(procs):
            _stop(proc)


if __name__ == "__main__":
    main()
