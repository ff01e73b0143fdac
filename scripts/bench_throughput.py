#!/usr/bin/env python
"""Throughput of the job path, measured side by side in one run on the same broker and pool.

(a) jobs/s of the full path (validate, SQL record, publish, worker marks running, provider call over HTTP
    through the SDK, result recorded) against a zero-latency fake provider, divided by jobs/s of a bare
    Celery no-op task through the same worker.  Goal >= 0.85.
(b) with 2 s provider latency, jobs/s of one LLM worker with 200 threads divided by the ideal
    concurrency / latency.  Goal >= 0.9.

(a) is shown two ways: end to end (first publish to last result, the producer in this process, each side
paying its own producer costs) and worker drain (messages queued first, then one worker drains them; rate
between first and last completion). Beside the end-to-end rates, the worker's CPU per job (Linux /proc):
the full path keeps the worker busy on one core (the GIL), while the no-op is bounded by broker round
trips, so their CPU per job says how far the full path's own work is from the no-op's.
(b) is a worker drain, twice: a burst of --slow-jobs (three waves of 200 threads) and a sustained run of
--sustained-jobs. Each prints the rate over the whole run, which carries two fixed costs (the start-up
ramp and the last wave's tail, together about one latency) and so grows with the run's length, and, when
the run is long enough, the steady rate while the worker had a backlog: the worker's throughput.
Runs are bounded; everything targets loopback.
Usage: scripts/bench_throughput.py [--jobs 600] [--rounds 3] [--slow-jobs 600] [--sustained-jobs 2000]
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc); None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        USE_FAKE_PROVIDER="1",
        LOG_LEVEL="WARNING",
        QUEUE_MAX_SIZE="100000",  # (b) queues thousands of jobs before its worker starts
    )
    # the worker imports scripts/bench_tasks.py (the plain SDK task) from here
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    if "BENCH_DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    else:
        os.environ.pop("DATABASE_URL", None)


def _start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process of the bench (its output to ``log``), with this environment plus ``env``."""
    # scripts/ on the path: workers import the plain tasks of bench_tasks.py
    path = os.pathsep.join(p for p in (str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")) if p)
    with open(log, "wb") as fh:
        return subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
        )


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
    from ultra_tasks.config import load_settings
    from workers import roles

    argv = roles()["llm"].argv(
        load_settings(),
        concurrency=concurrency,
        node_name=node,
        extra=["--without-mingle", "--without-gossip", "--include", "bench_tasks"],
    )
    proc = _start(argv, tmp / f"{node}.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(node in r for r in app.control.ping(destination=[node], timeout=0.5) or []):
            return proc
    _stop(proc)
    raise SystemExit(f"worker did not start; see {tmp}")


def _wait_all(ids: list[str], timeout: float) -> list[float]:
    """Wait for every no-op's result; return their completion times (epoch seconds, from the result
    backend)."""
    from datetime import datetime

    from celery.result import AsyncResult

    from ultra_tasks.celery_app import app

    deadline = time.monotonic() + timeout
    done = []
    for task_id in ids:
        res = AsyncResult(task_id, app=app)
        res.get(timeout=max(0.1, deadline - time.monotonic()), propagate=True)
        done.append(datetime.fromisoformat(str(res.date_done)).timestamp())
    return done


def _wait_jobs(ids: list[str], timeout: float) -> list[float]:
    """Wait until every job's row is final; return their finish times (epoch seconds, from the job table:
    a job's row is its result, the result backend holds nothing for it)."""
    from sqlalchemy import select

    from ultra_tasks.db.engine import transaction
    from ultra_tasks.jobs.records import FINAL, jobs

    deadline = time.monotonic() + timeout
    done: dict[str, float] = {}
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(done)} of {len(ids)} jobs not finished in {timeout:g}s")
        waiting = [i for i in ids if i not in done]
        for start in range(0, len(waiting), 1000):
            with transaction() as conn:
                rows = conn.execute(
                    select(jobs.c.id, jobs.c.finished_at).where(
                        jobs.c.id.in_(waiting[start : start + 1000]), jobs.c.status.in_(FINAL)
                    )
                ).all()
            done.update((r.id, r.finished_at.timestamp()) for r in rows)
        if len(done) < len(ids):
            time.sleep(0.05)
    return [done[i] for i in ids]


def _publish_tasks(task: str, n: int) -> list[str]:
    """``n`` messages for ``task`` (a baseline: no job record), with the job path's payload."""
    from ultra_tasks.celery_app import app

    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}
    ids = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        app.send_task(task, args=[task_id, payload], task_id=task_id, queue="llm.default")
        ids.append(task_id)
    return ids


def _publish_noops(n: int) -> list[str]:
    return _publish_tasks("ultra.noop", n)


def _publish_plain(n: int) -> list[str]:
    return _publish_tasks("bench.plain_sdk", n)


def _submit_jobs(n: int, producers: int = 1) -> list[str]:
    from ultra_tasks import submit

    def one(_: int) -> str:
        return submit("bench", model="gpt-4o-mini", max_tokens=16).id

    if producers == 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(producers) as pool:
        return list(pool.map(one, range(n)))


def _waiter(publish: Callable[[int], list[str]]) -> Callable[[list[str], float], list[float]]:
    return _wait_jobs if publish is _submit_jobs else _wait_all


def end_to_end_rate(
    publish: Callable[[int], list[str]], n: int, worker_pid: int
) -> tuple[float, float | None]:
    """Producer and worker together: first publish to last result. Also the worker's CPU per job (ms)."""
    cpu_before = _cpu_s(worker_pid)
    started = time.perf_counter()
    _waiter(publish)(publish(n), 600)
    rate = n / (time.perf_counter() - started)
    cpu_after = _cpu_s(worker_pid)
    if cpu_before is None or cpu_after is None:
        return rate, None
    return rate, (cpu_after - cpu_before) / n * 1000


def drain_rate(publish: Callable[[int], list[str]], n: int, concurrency: int, tmp: Path) -> float:
    """The worker alone: messages queued first, then one worker drains them; rate between first and last
    completion."""
    ids = publish(n)
    worker = _start_worker(concurrency, tmp)
    try:
        done = sorted(_waiter(publish)(ids, 600))
    finally:
        _stop(worker)
    return (n - 1) / (done[-1] - done[0])


def busy_rates(n: int, concurrency: int, latency_s: float, tmp: Path) -> tuple[float, float | None]:
    """The worker alone, for slow jobs: jobs queued first, then one worker drains them. From the job
    table's start and finish times, two rates:

    - span: jobs / (last finish - first start), the whole run, including the start-up ramp (one consumer
      hands the first wave to the threads message by message) and the last wave's tail (threads fall
      idle as the backlog runs out); both are fixed costs, so this rate grows with the run's length;
    - steady: jobs finished per second while the worker still had a backlog, from one latency after the
      first start (when the first wave is due back) to the last start. None when the run is too short to
      have such a window.
    """
    from sqlalchemy import select

    from ultra_tasks.db.engine import transaction
    from ultra_tasks.jobs.records import jobs

    ids = _submit_jobs(n, producers=4)
    worker = _start_worker(concurrency, tmp)
    try:
        _wait_jobs(ids, timeout=600)
    finally:
        _stop(worker)
    with transaction() as conn:
        rows = conn.execute(select(jobs.c.started_at, jobs.c.finished_at).where(jobs.c.id.in_(ids))).all()
    starts = [r.started_at.timestamp() for r in rows]
    finishes = [r.finished_at.timestamp() for r in rows]
    span = n / (max(finishes) - min(starts))
    window_from, window_to = min(starts) + latency_s, max(starts)
    if window_to - window_from < 2 * latency_s:
        return span, None
    finished_in_window = sum(1 for f in finishes if window_from <= f <= window_to)
    return span, finished_in_window / (window_to - window_from)


def sdk_call_cpu_ms(n: int) -> float:
    """CPU per provider call through the official SDK against the zero-latency fake provider, alone in
    this process (one thread, warm): the least any job that calls a provider adds to a no-op task."""
    from ultra_tasks.providers.base import LLMRequest
    from ultra_tasks.providers.registry import default_registry, provider_for_model

    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16}
    request = LLMRequest.from_dict(payload)
    provider = default_registry().get(provider_for_model(request.model))
    for _ in range(50):
        provider.complete(request, timeout=10)
    started = time.thread_time()
    for _ in range(n):
        provider.complete(request, timeout=10)
    return (time.thread_time() - started) / n * 1000


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=600, help="jobs per side per round in (a)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds in (a); the median is kept")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads in (a)")
    parser.add_argument("--no-drain", dest="drain", action="store_false", help="skip (a)'s worker drains")
    parser.add_argument("--slow-jobs", type=int, default=600, help="jobs in (b), burst")
    parser.add_argument("--sustained-jobs", type=int, default=2000, help="jobs in (b), sustained (0: skip)")
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
    fake = _start(
        [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", fake_port], tmp / "fake.log"
    )
    control = FakeProviderControl(os.environ["FAKE_PROVIDER_URL"])
    deadline = time.monotonic() + 30
    while not control.healthy() and time.monotonic() < deadline:
        time.sleep(0.1)
    procs = [fake]
    try:
        worker = _start_worker(args.concurrency, tmp)
        procs.append(worker)
        sides = {"noop": _publish_noops, "plain": _publish_plain, "job": _submit_jobs}
        for publish in sides.values():  # warm-up: imports, connection pools, SDK clients
            end_to_end_rate(publish, 50, worker.pid)
        # interleaved rounds so drift on a shared machine hits every side alike; medians are reported
        e2e: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, publish in sides.items():
                rate, ms = end_to_end_rate(publish, args.jobs, worker.pid)
                e2e[side].append(rate)
                if ms is not None:
                    cpu[side].append(ms)
        _stop(worker)
        procs.remove(worker)
        drain: dict[str, list[float]] = {side: [] for side in sides}
        if args.drain:
            for _ in range(args.rounds):
                for side, publish in sides.items():
                    drain[side].append(drain_rate(publish, args.jobs, args.concurrency, tmp))
        print(
            f"(a) one worker, threads pool c={args.concurrency}, {args.jobs} per side x {args.rounds} rounds "
            f"(median), database {os.environ.get('DATABASE_URL', 'SQLite (embedded default)').split('@')[-1]}"
        )
        names = {
            "noop": "bare Celery no-op task",
            "plain": "plain task + SDK call",
            "job": "full job path",
        }
        for label, rates in (("end to end (producer + worker)", e2e), ("worker drain (queued first)", drain)):
            if not all(rates.values()):
                continue
            print(f"    {label}")
            for side, values in rates.items():
                print(f"      {names[side]:<23}: {_median(values):8.1f} jobs/s  {[round(r) for r in values]}")
            job = _median(rates["job"])
            print(f"      full / plain           : {job / _median(rates['plain']):8.3f}  (goal >= 0.8)")
            print(f"      full / no-op           : {job / _median(rates['noop']):8.3f}")
        if all(cpu.values()):
            ms = {side: _median(values) for side, values in cpu.items()}
            print("    worker CPU per job, end to end rounds (median)")
            for side, values in cpu.items():
                print(f"      {names[side]:<23}: {ms[side]:8.2f} ms  {[round(v, 2) for v in values]}")
            print(f"      full / plain           : {ms['job'] / ms['plain']:8.2f}x  (goal <= 1.25x)")
            print(f"      full - plain           : {ms['job'] - ms['plain']:8.2f} ms  (resilience's cost)")
            print(f"      one SDK call, alone    : {sdk_call_cpu_ms(500):8.2f} ms  (in this process)")

        # (b) one LLM worker, many threads, slow provider: jobs queued first, then the worker drains them
        control.add_fault("latency", ms=args.latency_ms)
        ideal = args.threads / (args.latency_ms / 1000)
        print(
            f"(b) one worker, threads pool c={args.threads}, provider latency {args.latency_ms} ms, "
            "jobs queued first, then one worker drains them"
        )
        for label, count in (("burst", args.slow_jobs), ("sustained", args.sustained_jobs)):
            if count <= 0:
                continue
            span, steady = busy_rates(count, args.threads, args.latency_ms / 1000, tmp)
            print(f"    {label}: {count} jobs")
            print(f"      ideal c / latency      : {ideal:8.1f} jobs/s")
            for name, rate in (("whole run (span)", span), ("steady, with backlog", steady)):
                if rate is not None:
                    print(f"      {name:<23}: {rate:8.1f} jobs/s  ratio {rate / ideal:6.3f}  (goal >= 0.9)")
    finally:
        for proc in reversed(procs):
            _stop(proc)


if __name__ == "__main__":
    main()
