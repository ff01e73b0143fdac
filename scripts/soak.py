#!/usr/bin/env python
"""A bounded, randomized fault soak of the job path: tests/chaos/test_soak.py, sized by hand.

Two or more real workers and beat on a private Redis (AOF) and a private PostgreSQL; the fake provider with
latency and bursts of 503s; while the jobs run, workers are killed with SIGKILL, PostgreSQL is stopped and
started, Redis is restarted and job messages are published again, at random times from a printed seed.
It ends by checking that every accepted job is final, that no job reached the provider more often than its
lease counted calls going out, that no job was charged past its budget and that no lease is still held.
The test suite runs it short (80 jobs, 40 s of faults); this runs it as long as asked. Everything it starts
listens on loopback and is stopped at the end.

Usage: scripts/soak.py [--jobs 1000] [--seconds 600] [--workers 3] [--seed N]
Re-running with a seed replays the same choice and timing of faults (the machine's timing still varies).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the producer submits")
    parser.add_argument("--seconds", type=float, default=600, help="seconds of faults")
    parser.add_argument("--workers", type=int, default=3, help="LLM worker processes")
    parser.add_argument("--seed", type=int, default=None, help="the faults' random seed (default: random)")
    args = parser.parse_args()
    if args.jobs < 1 or args.seconds <= 0 or args.workers < 1:
        parser.error("--jobs, --seconds and --workers must be positive")
    env = {
        **os.environ,
        "SOAK_JOBS": str(args.jobs),
        "SOAK_SECONDS": str(args.seconds),
        "SOAK_WORKERS": str(args.workers),
    }
    if args.seed is not None:
        env["SOAK_SEED"] = str(args.seed)
    command = [str(ROOT / "scripts" / "test"), "tests/chaos/test_soak.py", "-s", "-q"]
    return subprocess.call(command, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
