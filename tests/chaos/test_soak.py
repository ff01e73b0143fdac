"""A bounded, randomized fault soak of the whole job path (run long by hand: scripts/soak.py).

Two or more real workers and beat on a private Redis (AOF) and a private PostgreSQL; a producer process
submitting jobs (each retried under its own id until accepted); the fake provider with latency and bursts
of 503s. While the jobs run, at random times drawn from a printed seed: a worker killed with SIGKILL (and
started again), PostgreSQL stopped and started, Redis restarted, copies of accepted jobs' messages
published again. At the end:
- every accepted job is final;
- no job reached the provider more often than calls were counted going out, in its lease (Redis) or, while
  Redis was down, in its row (a run that lost its lease calls nothing: a second run of a job shows as
  calls nobody counted);
- no job was charged more calls than its attempt budget;
- no lease is still held (every run ended, none by a dead owner).

Size: SOAK_JOBS (default 80), SOAK_SECONDS of faults (default 40), SOAK_WORKERS (default 2), SOAK_SEED.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT
from fleet import AofRedis, Fleet, aof_redis_fixture  # noqa: F401 - the fixture
from producer import MODEL
from sqlalchemy import create_engine, select

from ultra_tasks import keys
from ultra_tasks.providers.fake_server import prompt_key

JOBS = int(os.environ.get("SOAK_JOBS", "80"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "2"))
#: attempt budget of every job in the soak (RETRY_MAX_ATTEMPTS 3 + 2)
BUDGET = 5

pytestmark = pytest.mark.timeout(int(SECONDS * 3 + JOBS * 2 + 300))


class Soak:
    def __init__(self, fleet: Fleet, redis_server: AofRedis, postgres: Any, fake: Any, seed: int) -> None:
        self.fleet, self.redis_server, self.postgres, self.fake = fleet, redis_server, postgres, fake
        self.rng = random.Random(seed)
        self.events: list[str] = []
        self.workers: dict[str, Any] = {}

    def start_worker(self, name: str) -> None:
        self.workers[name] = self.fleet.worker(name, concurrency=8)

    def kill_worker(self) -> None:
        name = self.rng.choice(sorted(self.workers))
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait(10)
        self.events.append(f"kill -9 {name}")
        self.start_worker(name)

    def postgres_outage(self) -> None:
        seconds = self.rng.uniform(2, 6)
        self.postgres.stop()
        time.sleep(seconds)
        self.postgres.start()
        self.events.append(f"PostgreSQL down {seconds:.1f}s")

    def redis_restart(self) -> None:
        self.redis_server.stop()
        self.redis_server.start()
        self.events.append("Redis restarted")

    def provider_503s(self) -> None:
        times = self.rng.randint(2, 6)
        self.fake.add_fault("status", model=MODEL, status=503, times=times)
        self.events.append(f"{times} x 503")

    def duplicates(self, ids: list[str]) -> None:
        """Publish accepted jobs' messages again, as a redelivery or a flood would."""
        from ultra_tasks.jobs.submit import publish

        picked = self.rng.sample(ids, min(len(ids), self.rng.randint(3, 15)))
        engine = create_engine(self.fleet.db_url)
        try:
            with engine.connect() as conn:
                from ultra_tasks.jobs.records import jobs

                rows = conn.execute(
                    select(jobs.c.id, jobs.c.queue, jobs.c.request).where(jobs.c.id.in_(picked))
                ).all()
        except Exception as exc:  # the database may be down at this moment: no duplicates this time
            self.events.append(f"duplicates skipped ({type(exc).__name__})")
            return
        finally:
            engine.dispose()
        for row in rows:
            publish(row.id, row.queue, row.request)
        self.events.append(f"{len(rows)} duplicates")

    def chaos(self, ids_file: Path, until: float) -> None:
        actions = [self.kill_worker, self.postgres_outage, self.redis_restart, self.provider_503s]
        while time.monotonic() < until:
            time.sleep(self.rng.uniform(1.5, 4.0))
            if self.rng.random() < 0.25:
                ids = ids_file.read_text().split() if ids_file.exists() else []
                if ids:
                    self.duplicates(ids)
                    continue
            self.rng.choice(actions)()


def test_soak_every_accepted_job_ends_with_no_uncounted_call(
    tmp_path: Path, aof_redis: AofRedis, private_postgres: Any, fake_provider: Any
) -> None:
    from ultra_tasks.config import reset_settings
    from ultra_tasks.db.engine import dispose_engines
    from ultra_tasks.db.migrate import upgrade_schema

    seed = int(os.environ.get("SOAK_SEED") or random.randrange(1 << 30))
    print(f"\nsoak seed {seed}: {JOBS} jobs, {SECONDS:.0f}s of faults, {WORKERS} workers")
    env = {
        **os.environ,
        "REDIS_URL": aof_redis.url,
        "DATABASE_URL": private_postgres.url,
        "ULTRA_VAR_DIR": str(tmp_path / "var"),
        "HEALTH_CHECK_INTERVAL": "2",
        "JOB_LEASE_TTL": "6",
        "CIRCUIT_BREAKER_RESET_TIMEOUT": "2",
        "PYTHONPATH": str(ROOT),
    }
    for var in ("BROKER_URL", "RESULT_BACKEND_URL"):
        env.pop(var, None)
    # this process publishes the duplicates: it talks to the soak's Redis and database
    os.environ.update({k: env[k] for k in ("REDIS_URL", "DATABASE_URL", "ULTRA_VAR_DIR")})
    reset_settings()
    dispose_engines()
    upgrade_schema()

    fleet = Fleet(tmp_path, env)
    soak = Soak(fleet, aof_redis, private_postgres, fake_provider, seed)
    try:
        fake_provider.add_fault("latency", model=MODEL, ms=300)  # calls are in flight when workers die
        for i in range(WORKERS):
            soak.start_worker(f"soak{i}")
        fleet.beat()
        ids_file = tmp_path / "ids"
        producer = fleet.producer("producer", JOBS, ids_file, pause_s=max(0.0, SECONDS * 0.8 / JOBS))
        chaos = threading.Thread(target=soak.chaos, args=(ids_file, time.monotonic() + SECONDS), daemon=True)
        chaos.start()
        chaos.join(SECONDS + 60)
        assert not chaos.is_alive(), "the chaos loop did not stop"
        assert producer.wait(JOBS * 2 + 120) == 0, fleet.log("producer")[-3000:]
        accepted = ids_file.read_text().split()
        assert len(accepted) == JOBS
        print("events:", "; ".join(soak.events))

        # Then every accepted job ends (the sweeper republishes what a killed worker held)
        def final() -> bool:
            jobs = fleet.jobs()
            return all(jobs.get(j, ("missing", 0))[0] in ("succeeded", "failed") for j in accepted)

        fleet.wait_until(final, 120 + JOBS, "every accepted job to be final")
        jobs = fleet.jobs()
        calls_seen = fake_provider.stats()["by_prompt"]
        client = redis.Redis.from_url(aof_redis.url, decode_responses=True)
        problems: list[str] = []
        statuses: dict[str, int] = {}
        total_calls = total_sent = 0
        for i, job_id in enumerate(accepted):
            status, attempts = jobs[job_id]
            statuses[status] = statuses.get(status, 0) + 1
            seen = int(calls_seen.get(prompt_key(f"producer {i}"), 0))
            lease = client.hgetall(keys.job_lease(job_id))
            # calls are counted before they go out: in the lease in Redis, or, while Redis is down, in
            # the job's row (whose count also holds calls it was told of from Redis: an upper bound)
            counted = int(lease.get("sent", 0)) + attempts
            total_calls, total_sent = total_calls + seen, total_sent + int(lease.get("sent", 0))
            if seen > counted:
                problems.append(
                    f"{job_id}: the provider saw {seen} calls, {counted} were counted ({attempts} in "
                    f"its row): {lease}"
                )
            if attempts > BUDGET:
                problems.append(f"{job_id}: charged {attempts} calls, over the budget of {BUDGET}")

        # every run has ended: each lease was given back or, once its job was final, lapses within a TTL
        # (a final lease is released with others, or left to lapse)
        def held() -> list[str]:
            now_ms = int(client.time()[0]) * 1000
            leases = {j: client.hgetall(keys.job_lease(j)) for j in accepted}
            return [f"{j}: {v.get('owner')}" for j, v in leases.items() if int(v.get("exp", 0)) > now_ms]

        deadline = time.monotonic() + float(env["JOB_LEASE_TTL"]) + 3
        while held() and time.monotonic() < deadline:
            time.sleep(0.5)
        problems.extend(f"lease still held: {h}" for h in held())
        print(f"soak seed {seed}: {statuses}; provider calls {total_calls}, counted as sent {total_sent}")
        assert not problems, f"seed {seed}: " + "\n".join(problems[:20])
    finally:
        fleet.stop_all()
