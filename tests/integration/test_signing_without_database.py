"""A worker checks a job message's signature before it reads anything (ultra_tasks/signing.py), so a forged
message is refused and counted the same while the worker's database is down: it is neither run, retried
until the database returns, nor written to the record buffer.

A module of its own: a worker shared by another module's tests (``llm_worker``) would take the forged
messages with its database up."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from conftest import wait_for

from ultra_tasks import app, keys
from ultra_tasks.broker import publish_options
from ultra_tasks.config import get_settings
from ultra_tasks.jobs.validation import build_request

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("closed_provider_breakers")]


def _refused(redis_client: Any) -> int:
    field = json.dumps(["refused", "job"], separators=(",", ":"))
    return int(redis_client.hget(keys.metrics_jobs(), field) or 0)


def test_a_forged_job_is_refused_and_counted_while_the_workers_database_is_down(
    private_postgres: Any, worker_factory: Any, fake_provider: Any, redis_client: Any, broker_queues: Any
) -> None:
    # Given a worker whose database is stopped (it starts against it, then loses it)
    worker = worker_factory(concurrency=2, env={"DATABASE_URL": private_postgres.url})
    private_postgres.stop()
    buffered_before = redis_client.llen(keys.record_buffer())
    refused_before = _refused(redis_client)
    # When job messages with no valid signature reach its queue (Flower's async-apply, a write to Redis)
    payload = build_request(get_settings(), prompt="forged while down", model="gpt-4o-mini").to_dict()
    forged = [str(uuid.uuid4()) for _ in range(2)]
    for job_id, kwargs in zip(forged, ({}, {"sig": "v1:" + "0" * 64}), strict=True):
        app.send_task(
            "ultra.run_job",
            args=[job_id, payload],
            kwargs=kwargs,
            task_id=job_id,
            **publish_options("llm.high"),
        )
    # Then each is refused and counted at once, as with the database up
    wait_for(lambda: _refused(redis_client) >= refused_before + 2, 30, "two refused job messages counted")
    log = worker.log()
    for job_id in forged:
        assert log.count(f"refused job message {job_id}") == 1, log[-3000:]
    # and nothing of them waits for the database: no provider call, no retry in the queue, no record
    assert fake_provider.stats()["total"] == 0
    assert broker_queues.depth("llm.high") == 0
    assert redis_client.llen(keys.record_buffer()) == buffered_before
    assert os.environ["DATABASE_URL"] != private_postgres.url  # the producer's own database is the session's
