#!/usr/bin/env python
"""Throughput of the job path, measured side by side in one run on the same broker and pool.

(a) jobs/s of the full path (validate, SQL record, publish, worker marks running, provider call over HTTP
    through the SDK, result recorded) against a zero-latency fake provider, divided by jobs/s of a bare
    Celery no-op task through the same worker.  Goal >= 0.85.
(b) with 2 s provider latency, jobs/s of one LLM worker with 200 threads divided by the ideal
    concurrency / latency.  Goal >= 0.9.

Both sides are timed end to end from the first publish to the last result, with the producer in this
process, so each side pays its own producer costs. Runs are bounded; everything targets loopback only.
Usage: scripts/bench_throughput.py [--jobs 600] [--rounds 3] [--slow-jobs 600]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup_env(tmp: Path) -> None:
    os.environ.update(
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        ULTRA_VAR_DIR=str(tmp),
        ULTRA_REDIS_NAMESPACE="ultra-bench",
        FAKE_PROVIDER_URL=f"http://127.0.0.1:{_free_port()}",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    if "BENCH_DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    else:
        os.environ.pop("DATABASE_URL", None)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start_worker(concurrency: int, tmp: Path) -> subprocess.Popen[bytes]:
    from ultra_tasks.celery_app import app

    node = f"bench-{uuid.uuid4().hex[:6]}@localhost"
    proc = _start([sys.executable, "-m", "celery", "-A", "ultra_tasks", "worker", "-Q",
                   "llm.high,llm.default,llm.low", "-P", "threads", "-c", str(concurrency), "-n", node,
                   "--loglevel", "WARNING", "--without-mingle", "--without-gossip"], tmp / f"{node}.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(node in r for r in app.control.ping(destination=[node], timeout=0.5) or []):
            return proc
    _stop(proc)
    raise SystemExit(f"worker did not start; see {tmp}")


def _wait_all(ids: list[str], timeout: float) -> None:
    from celery.result import AsyncResult

    from ultra_tasks.celery_app import app

    deadline = time.monotonic() + timeout
    for task_id in ids:
        AsyncResult(task_id, app=app).get(timeout=max(0.1, deadline - time.monotonic()), propagate=True)


def run_noop(n: int) -> float:
    from ultra_tasks.celery_app import app

    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}
    started = time.perf_counter()
    ids = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        app.send_task("ultra.noop", args=[task_id, payload], task_id=task_id, queue="llm.default")
        ids.append(task_id)
    _wait_all(ids, timeout=300)
    return n / (time.perf_counter() - started)


def run_jobs(n: int, producers: int = 1) -> float:
    from ultra_tasks import submit

    def one(_: int) -> str:
        return submit("bench", model="gpt-4o-mini", max_tokens=16).id

    started = time.perf_counter()
    if producers == 1:
        ids = [one(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(producers) as pool:
            ids = list(pool.map(one, range(n)))
    _wait_all(ids, timeout=600)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=600, help="jobs per side per round in (a)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds in (a); the median is kept")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads in (a)")
    parser.add_argument("--slow-jobs", type=int, default=600, help="jobs in (b)")
    parser.add_argument("--threads", type=int, default=200, help="worker threads in (b)")
    parser.add_argument("--latency-ms", type=int, default=2000, help="provider latency in (b)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ultra-bench-"))
    _setup_env(tmp)
    import redis

    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.providers.fake_server import FakeProviderControl

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    upgrade_schema()
    fake_port = os.environ["FAKE_PROVIDER_URL"].rsplit(":", 1)[1]
    fake = _start([sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", fake_port], tmp / "fake.log")
    control = FakeProviderControl(os.environ["FAKE_PROVIDER_URL"])
    deadline = time.monotonic() + 30
    while not control.healthy() and time.monotonic() < deadline:
        time.sleep(0.1)
    procs = [fake]
    try:
        # (a) same worker, same pool, alternating rounds so drift on a shared machine hits both sides
        worker = _start_worker(args.concurrency, tmp)
        procs.append(worker)
        run_noop(50)
        run_jobs(50)  # warm-up: imports, connection pools, SDK clients
        noop_rates, job_rates = [], []
        for _ in range(args.rounds):
            noop_rates.append(run_noop(args.jobs))
            job_rates.append(run_jobs(args.jobs))
        noop_rates.sort()
        job_rates.sort()
        noop, jobs = noop_rates[len(noop_rates) // 2], job_rates[len(job_rates) // 2]
        print(f"(a) threads pool c={args.concurrency}, {args.jobs} per side x {args.rounds} rounds (median)")
        print(f"    bare Celery no-op task : {noop:8.1f} jobs/s   rounds {[round(r, 1) for r in noop_rates]}")
        print(f"    full job path          : {jobs:8.1f} jobs/s   rounds {[round(r, 1) for r in job_rates]}")
        print(f"    ratio full/no-op       : {jobs / noop:8.3f}   (goal >= 0.85)")
        _stop(worker)
        procs.remove(worker)

        # (b) one LLM worker, many threads, slow provider
        control.add_fault("latency", ms=args.latency_ms)
        worker = _start_worker(args.threads, tmp)
        procs.append(worker)
        rate = run_jobs(args.slow_jobs, producers=4)
        ideal = args.threads / (args.latency_ms / 1000)
        print(f"(b) threads pool c={args.threads}, provider latency {args.latency_ms} ms, {args.slow_jobs} jobs")
        print(f"    achieved               : {rate:8.1f} jobs/s")
        print(f"    ideal c/latency        : {ideal:8.1f} jobs/s")
        print(f"    ratio achieved/ideal   : {rate / ideal:8.3f}   (goal >= 0.9)")
    finally:
        for proc in reversed(procs):
            _stop(proc)


if __name__ == "__main__":
    main()
