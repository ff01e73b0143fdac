"""Chaos tests' fleet: worker, beat and producers in subprocesses, against services the test may kill.

Each test gets its own Redis (a private redis-server with AOF, on a free loopback port) for broker, result
backend and state, and its own SQLite job table (the embedded default), so an outage it causes hurts no
other test, and the beat it starts writes no mode history into the session's database. Every wait is
bounded; everything started is killed at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ON_CI, ROOT, RedisServer
from sqlalchemy import create_engine, func, select

PRODUCER = Path(__file__).with_name("producer.py")


class AofRedis(RedisServer):
    """A redis-server with an append-only file, so a restart keeps what it acknowledged."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)

    def persistence(self) -> list[str]:
        return ["--dir", str(self.dir), "--save", "", "--appendonly", "yes", "--appendfsync", "always"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
            self.proc.wait(20)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


class Fleet:
    """Worker, beat and producer subprocesses sharing one environment."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    @property
    def db_url(self) -> str:
        return self.env["DATABASE_URL"]

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker(self, name: str, concurrency: int, queues: str = "llm.high,llm.default,llm.low,ops") -> Any:
        from ultra_tasks.config import load_settings
        from workers import roles

        argv = roles()["llm"].argv(
            load_settings(**{k.lower(): v for k, v in self.env.items() if k in ("REDIS_URL",)}),
            concurrency=concurrency,
            node_name=f"{name}@chaos",
            extra=["--without-mingle", "--without-gossip"],
        )
        argv[argv.index("-Q") + 1] = queues
        proc = self._spawn(name, argv)
        deadline = time.monotonic() + 60
        while "ready." not in self.log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start:\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        return proc

    def beat(self) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ultra_tasks",
            "beat",
            "-s",
            str(self.tmp / "beat-schedule"),
        ]
        return self._spawn("beat", [*argv, "--loglevel", "INFO"])

    def producer(
        self, name: str, count: int, ids_file: Path, pause_s: float = 0.0
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(PRODUCER), str(count), str(ids_file), name, str(pause_s)]
        return self._spawn(name, argv)

    def jobs(self) -> dict[str, tuple[str, int]]:
        """id → (status, attempts) of every job in the fleet's table."""
        from ultra_tasks.jobs.records import jobs

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(jobs.c.id, jobs.c.status, jobs.c.attempts)).all()
        finally:
            engine.dispose()
        return {r.id: (r.status, int(r.attempts)) for r in rows}

    def count(self, status: str) -> int:
        from ultra_tasks.jobs.records import jobs

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                q = select(func.count()).select_from(jobs).where(jobs.c.status == status)
                return int(conn.execute(q).scalar_one())
        finally:
            engine.dispose()

    def statuses(self) -> dict[str, list[str]]:
        """Job ids by status, every job not yet succeeded listed (what a timed-out wait shows)."""
        from ultra_tasks.jobs.records import jobs

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(jobs.c.id, jobs.c.status, jobs.c.published_at, jobs.c.worker)
                ).all()
        finally:
            engine.dispose()
        out: dict[str, list[str]] = {}
        for job_id, status, published_at, worker in rows:
            out.setdefault(status, []).append(
                "" if status == "succeeded" else f"{job_id} published {published_at} worker {worker}"
            )
        return out

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.log(n)[-2500:]}" for n, _ in self.procs)
                jobs = {s: (len(ids), [i for i in ids if i][:5]) for s, ids in self.statuses().items()}
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\njobs: {jobs}\n{logs}")
            time.sleep(0.25)

    def stop_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture(name="aof_redis")
def aof_redis_fixture(tmp_path: Path) -> Iterator[AofRedis]:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        if ON_CI:
            pytest.fail("redis-server binary not installed")
        pytest.skip("redis-server binary not installed")
    server = AofRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="fleet")
def fleet_fixture(tmp_path: Path, aof_redis: AofRedis, fake_provider: Any) -> Iterator[Fleet]:
    env = {
        **os.environ,
        "REDIS_URL": aof_redis.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'chaos.db'}",
        "ULTRA_VAR_DIR": str(tmp_path / "var"),
        "HEALTH_CHECK_INTERVAL": "2",
        "PYTHONPATH": str(ROOT),
    }
    for var in ("BROKER_URL", "RESULT_BACKEND_URL"):
        env.pop(var, None)
    f = Fleet(tmp_path, env)
    yield f
    f.stop_all()
