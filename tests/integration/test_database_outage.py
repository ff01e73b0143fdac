"""PostgreSQL stopped while jobs run: workers keep completing them, their record writes wait in Redis, and
after the database returns the job table holds the whole history."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from ultra_tasks import JobStatus, SystemOperationMode, keys, submit
from ultra_tasks.config import reset_settings
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.health.checks import DatabaseHealthCheck
from ultra_tasks.health.runner import check_and_evaluate
from ultra_tasks.jobs import records
from ultra_tasks.jobs.record_buffer import RecordWriter

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("closed_provider_breakers")]


def test_jobs_complete_while_postgres_is_down_and_their_records_arrive_after_it_returns(
    private_postgres: Any, worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    # This test's producer and worker use a private PostgreSQL it can stop
    os.environ["DATABASE_URL"] = private_postgres.url
    reset_settings()
    upgrade_schema()
    worker_factory(concurrency=4, env={"DATABASE_URL": private_postgres.url})
    writer = RecordWriter(redis_client)
    assert writer.depth() == 0

    fake_provider.add_fault("latency", model="gpt-4.1-mini", ms=700)
    handles = [submit(f"outage {i}", model="gpt-4.1-mini") for i in range(16)]
    time.sleep(0.3)  # the first four are running
    private_postgres.stop()

    # Jobs still complete (their results come from the result backend) ...
    results = [h.result(timeout=60) for h in handles]
    assert [r.text for r in results] == [f"echo: outage {i}" for i in range(16)]
    # ... and what they would have written to the job table waits in Redis
    assert writer.depth() > 0
    with pytest.raises(Exception, match="database"):
        records.get_job(handles[-1].id)
    # The health checks still move the mode (through Redis; the database being down degrades it), and
    # listeners hear it
    mode = SystemOperationMode()  # started while its database is down
    heard: list[tuple[str, str]] = []
    mode.add_mode_change_listener(lambda old, new, reasons: heard.append((old, new)))
    checks = [DatabaseHealthCheck()]
    assert check_and_evaluate(mode, checks)["mode"] == "DEGRADED"
    assert mode.current_mode == "DEGRADED"
    deadline = time.monotonic() + 5
    while not heard and time.monotonic() < deadline:
        time.sleep(0.05)
    assert heard == [("NORMAL", "DEGRADED")]

    private_postgres.start()
    deadline = time.monotonic() + 60
    while writer.depth() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert writer.depth() == 0
    # (this process's database breaker, opened during the outage, lets a probe through after its reset)
    while time.monotonic() < deadline:
        try:
            records.count_jobs()
            break
        except DependencyUnavailableError:
            time.sleep(0.5)
    for handle, result in zip(handles, results, strict=True):
        record = handle.record()
        assert record["status"] == JobStatus.SUCCEEDED.value, record
        assert record["result"]["text"] == result.text
        assert record["provider"] == "openai" and record["model_used"] == "gpt-4.1-mini"
        assert record["started_at"] and record["finished_at"]
        assert record["started_at"] <= record["finished_at"]
        assert record["worker"]
    # each job called the provider once: no run was repeated because its record was late
    assert fake_provider.stats()["by_model"]["gpt-4.1-mini"] == len(handles)

    # The mode's history is complete too: the change made during the outage is in SQL, with its reason,
    # and recovery follows the usual hysteresis (two good evaluations)
    assert check_and_evaluate(mode, checks)["mode"] == "DEGRADED"
    assert check_and_evaluate(mode, checks)["mode"] == "NORMAL"
    history = mode.history()
    assert [(t["from"], t["to"]) for t in history[:2]] == [("DEGRADED", "NORMAL"), ("NORMAL", "DEGRADED")]
    assert history[1]["reasons"][0]["component"] == "database"
    assert [c.status for c in mode.component_states()] == ["ok"]
    mode.close()


def test_results_of_jobs_finished_while_postgres_is_down_are_read_from_redis_only_until_their_rows_land(
    private_postgres: Any, worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    os.environ["DATABASE_URL"] = private_postgres.url
    reset_settings()
    upgrade_schema()
    worker_factory(concurrency=2, env={"DATABASE_URL": private_postgres.url})
    writer = RecordWriter(redis_client)
    fake_provider.add_fault("latency", model="gpt-4.1-mini", ms=500)
    handles = [submit(f"kept {i}", model="gpt-4.1-mini") for i in range(4)]
    time.sleep(0.3)  # the first two are running
    private_postgres.stop()

    # While the database is down, result() and status() answer from the outcome each worker kept in Redis
    # (JOB_OUTCOME_BUFFER_TTL minutes at most), not from the Celery result backend
    results = [h.result(timeout=60) for h in handles]
    assert [r.text for r in results] == [f"echo: kept {i}" for i in range(4)]
    assert [h.status() for h in handles] == [JobStatus.SUCCEEDED] * 4
    for handle in handles:
        assert 0 < redis_client.ttl(keys.job_outcome(handle.id)) <= 60 * 60
        assert not redis_client.exists(f"celery-task-meta-{handle.id}")

    # Once the buffered writes land, the rows answer and nothing of these jobs' outcomes is left in Redis
    private_postgres.start()
    deadline = time.monotonic() + 60
    while writer.depth() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert writer.depth() == 0
    assert not any(redis_client.exists(keys.job_outcome(h.id)) for h in handles)
    while time.monotonic() < deadline:
        try:
            records.count_jobs()
            break
        except DependencyUnavailableError:
            time.sleep(0.5)
    assert [h.result(timeout=10).text for h in handles] == [r.text for r in results]
    assert [h.record()["status"] for h in handles] == [JobStatus.SUCCEEDED.value] * 4
