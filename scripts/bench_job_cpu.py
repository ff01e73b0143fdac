#!/usr/bin/env python
"""CPU per job of the job path's own code, in process: ``submit`` (validate, admit, record, publish) and
the worker's run of the job (lease, spec, mode, cache, the provider call through the pipeline over HTTP
to a zero-latency fake provider, the fenced record of the outcome), without Celery's consumer around it.

Compares source trees side by side: each ``--tree`` (a checkout of this project; default: this one) runs
in its own subprocess with that tree first on the import path, in interleaved rounds, and the median CPU
time per job of each is printed with its ratio to the first tree. Use it to check that a change to the
job path does not make it slower::

    git worktree add /tmp/before <commit>
    scripts/bench_job_cpu.py --tree /tmp/before --tree .

Each round uses a fresh SQLite file and a private Redis database (``BENCH_REDIS_URL``, default db 11,
flushed); bounded; loopback only.
Usage: scripts/bench_job_cpu.py [--tree DIR ...] [--jobs 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One round in a subprocess: the tree's code on the path, N jobs submitted then run, CPU per job printed.
ROUND = r"""
import json, logging, os, sys, time, uuid
logging.disable(logging.WARNING)
n = int(sys.argv[1])
from ultra_tasks import submit
from ultra_tasks.jobs import runner
from ultra_tasks.jobs.records import get_job

def run(job_id, payload):
    return runner.execute_job(job_id, payload, queue="llm.default", worker="bench/1")

# warm-up: schema, connections, scripts, SDK import paths
warm = [submit(f"warm {i} {uuid.uuid4()}", model="gpt-4o-mini", cache=False) for i in range(20)]
for h in warm:
    run(h.id, get_job(h.id).request)
ids = []
started = time.process_time()
for i in range(n):
    ids.append(submit(f"bench {i} {uuid.uuid4()}", model="gpt-4o-mini", cache=False).id)
submitted = time.process_time()
payloads = [(job_id, get_job(job_id).request) for job_id in ids]
read = time.process_time()
for job_id, payload in payloads:
    run(job_id, payload)
ran = time.process_time()
assert all(get_job(j).status == "succeeded" for j in ids), "a benchmark job did not succeed"
print(json.dumps({"submit": (submitted - started) / n, "run": (ran - read) / n}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _round(tree: Path, jobs: int, env: dict[str, str]) -> dict[str, float]:
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    with tempfile.TemporaryDirectory(prefix="bench-job-cpu-") as tmp:
        round_env = {
            **env,
            "PYTHONPATH": str(tree),
            "DATABASE_URL": f"sqlite:///{tmp}/jobs.db",
            "ULTRA_VAR_DIR": f"{tmp}/var",
        }
        out = subprocess.run(
            [sys.executable, "-c", ROUND, str(jobs)],
            env=round_env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: the round failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        "ULTRA_REDIS_NAMESPACE": "ultra-bench",
        "FAKE_PROVIDER_URL": f"http://127.0.0.1:{port}",
        "USE_FAKE_PROVIDER": "1",
        "QUEUE_MAX_SIZE": str(10 * (args.jobs + 20)),
        "LOG_LEVEL": "WARNING",
    }
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "BROKER_URL", "RESULT_BACKEND_URL"):
        env.pop(var, None)
    fake = subprocess.Popen(
        [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
        for _ in range(args.rounds):  # interleaved so machine noise hits every tree alike
            for tree in trees:
                results[tree].append(_round(tree, args.jobs, env))
        print(f"CPU per job, {args.jobs} jobs x {args.rounds} interleaved rounds (median), in process")
        first: dict[str, float] = {}
        for tree, rounds in results.items():
            medians = {part: sorted(r[part] for r in rounds)[len(rounds) // 2] for part in ("submit", "run")}
            first = first or medians
            ratio = {part: medians[part] / first[part] for part in medians}
            print(
                f"  {tree!s:40} submit {medians['submit'] * 1e3:6.2f} ms (x{ratio['submit']:.3f})"
                f"   run {medians['run'] * 1e3:6.2f} ms (x{ratio['run']:.3f})"
            )
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
