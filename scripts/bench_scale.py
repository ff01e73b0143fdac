#!/usr/bin/env python
"""What Redis holds before, at the peak of and after a run of N jobs: its standing cost must follow the work
in flight, not the work done.

Starts a private redis-server on a free loopback port (so its memory is this run's alone), a fresh job
table (SQLite in a temporary directory, or BENCH_DATABASE_URL), the zero-latency fake provider and two LLM
workers; submits N small jobs (default 20,000) from four producer threads while the workers drain them;
samples Redis every second; then prints the keys per family (ids stripped) and Redis' used memory before,
at the peak, right after the drain and once a finished job's last key (its lease tombstone) has lapsed,
and the job table's rows. The workers run with a short job life (JOB_TIME_LIMIT 30 s, JOB_LEASE_TTL 5 s:
tombstones last 30 s here; 300 s with the defaults) so the last column comes soon.
Bounded: --timeout seconds for the drain; everything listens on loopback.
Usage: scripts/bench_scale.py [--jobs 20000] [--workers 2] [--concurrency 8] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_throughput import _start  # noqa: E402

WORKER_ENV = {"JOB_TIME_LIMIT": "30", "JOB_SOFT_TIME_LIMIT": "25", "JOB_LEASE_TTL": "5"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"[0-9a-f]{16,}")
_NUMBER = re.compile(r"\d+")


def family(key: str) -> str:
    return _NUMBER.sub("<n>", _HEX.sub("<hex>", _UUID.sub("<id>", key)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Sample:
    def __init__(self, client: Any) -> None:
        self.families: Counter[str] = Counter(family(k) for k in client.scan_iter(count=2000))
        self.used_memory = int(client.info("memory")["used_memory"])
        self.keys = sum(self.families.values())


class Sampler(threading.Thread):
    """Samples Redis every ``interval_s`` and keeps the sample with the most memory used."""

    def __init__(self, client: Any, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.client, self.interval_s = client, interval_s
        self.peak: Sample | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            sample = Sample(self.client)
            if self.peak is None or sample.used_memory > self.peak.used_memory:
                self.peak = sample

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _setup_env(tmp: Path, redis_port: int) -> None:
    os.environ.update(
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        ULTRA_VAR_DIR=str(tmp),
        ULTRA_REDIS_NAMESPACE="ultra-scale",
        FAKE_PROVIDER_URL=f"http://127.0.0.1:{_free_port()}",
        USE_FAKE_PROVIDER="1",
        LOG_LEVEL="WARNING",
        QUEUE_MAX_SIZE="1000000",
    )
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "BROKER_URL", "RESULT_BACKEND_URL", "CACHE_REDIS_URL"):
        os.environ.pop(var, None)
    if "BENCH_DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    else:
        os.environ.pop("DATABASE_URL", None)


def _start_worker(concurrency: int, tmp: Path) -> subprocess.Popen[bytes]:
    from ultra_tasks.celery_app import app
    from ultra_tasks.config import load_settings
    from workers import roles

    node = f"scale-{uuid.uuid4().hex[:6]}@localhost"
    argv = roles()["llm"].argv(
        load_settings(),
        concurrency=concurrency,
        node_name=node,
        extra=["--without-mingle", "--without-gossip"],
    )
    proc = _start(argv, tmp / f"{node}.log", WORKER_ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(node in r for r in app.control.ping(destination=[node], timeout=0.5) or []):
            return proc
    _stop(proc)
    raise SystemExit(f"worker did not start; see {tmp}")


def _job_rows() -> tuple[int, int]:
    """(rows, final rows) of the job table."""
    from sqlalchemy import func, select

    from ultra_tasks.db.engine import transaction
    from ultra_tasks.jobs.records import FINAL, jobs

    with transaction() as conn:
        rows = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
        final = conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.status.in_(FINAL))
        ).scalar_one()
    return int(rows), int(final)


def _submit_one(i: int) -> str:
    from ultra_tasks import submit

    return submit(f"scale {i}", model="gpt-4o-mini", max_tokens=8).id


def _mib(n: int) -> str:
    return f"{n / 1_048_576:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker")
    parser.add_argument("--producers", type=int, default=4, help="submitting threads")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds the drain may take")
    args = parser.parse_args()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not on PATH")

    tmp = Path(tempfile.mkdtemp(prefix="ultra-scale-"))
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    redis_proc = _start(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory-policy", "noeviction", "--dir", str(tmp)],
        tmp / "redis.log",
    )  # fmt: skip
    procs.append(redis_proc)
    try:
        _setup_env(tmp, port)
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        from ultra_tasks import submit
        from ultra_tasks.config import load_settings
        from ultra_tasks.db.migrate import upgrade_schema
        from ultra_tasks.providers.fake_server import FakeProviderControl

        upgrade_schema()
        fake_port = os.environ["FAKE_PROVIDER_URL"].rsplit(":", 1)[1]
        procs.append(
            _start(
                [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", fake_port],
                tmp / "fake.log",
            )
        )
        control = FakeProviderControl(os.environ["FAKE_PROVIDER_URL"])
        deadline = time.monotonic() + 30
        while not control.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(args.workers):
            procs.append(_start_worker(args.concurrency, tmp))
        # one job first, so the fixed keys (breakers, metrics, latency history) exist before "before"
        submit("warm up", model="gpt-4o-mini", max_tokens=8).result(timeout=60)
        time.sleep(2)
        before = Sample(client)
        rows_before, _ = _job_rows()

        sampler = Sampler(client)
        sampler.start()
        started = time.monotonic()
        with ThreadPoolExecutor(args.producers) as pool:
            list(pool.map(_submit_one, range(args.jobs)))
        submitted_s = time.monotonic() - started
        deadline = time.monotonic() + args.timeout
        while _job_rows()[1] < rows_before + args.jobs:
            if time.monotonic() > deadline:
                raise SystemExit(f"not drained within {args.timeout:g}s; see {tmp}")
            time.sleep(1)
        drained_s = time.monotonic() - started
        time.sleep(2)  # the workers' batched final lease releases go out
        sampler.stop()
        after = Sample(client)
        settings = load_settings(**{k.lower(): v for k, v in WORKER_ENV.items()})
        window_s = max(settings.job_time_limit, 5 * settings.job_lease_ttl) + 2
        time.sleep(window_s)
        settled = Sample(client)
        rows_after, final_after = _job_rows()
        peak = sampler.peak or after

        print(
            f"{args.jobs} jobs, {args.workers} workers x {args.concurrency} threads, "
            "zero-latency fake provider, "
            f"database {os.environ.get('DATABASE_URL', 'SQLite (embedded default)').split('@')[-1]}"
        )
        print(
            f"submitted in {submitted_s:.1f}s, drained in {drained_s:.1f}s "
            f"({args.jobs / drained_s:.0f} jobs/s)"
        )
        cols = ("before", "peak", "after drain", f"after +{window_s:g}s")
        samples = (before, peak, after, settled)
        names = sorted(set().union(*(s.families for s in samples)))
        width = max(len(n) for n in [*names, "key family"])
        print(f"{'key family':<{width}}  " + "  ".join(f"{c:>14}" for c in cols))
        for name in names:
            print(f"{name:<{width}}  " + "  ".join(f"{s.families.get(name, 0):>14}" for s in samples))
        print(f"{'keys in all':<{width}}  " + "  ".join(f"{s.keys:>14}" for s in samples))
        print(f"{'used_memory':<{width}}  " + "  ".join(f"{_mib(s.used_memory):>14}" for s in samples))
        print(f"job table rows: {rows_before} before, {rows_after} after ({final_after} finished)")
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
