"""A job whose run hits an unexpected error is recorded as failed, never left running."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from ultra_tasks import keys
from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.liveness import Heartbeat
from ultra_tasks.jobs.runner import execute_job
from ultra_tasks.jobs.validation import build_request


class ExplodingCaller:
    def call(self, *args: Any) -> Any:
        raise RuntimeError("a bug in the pipeline")


def test_unexpected_error_marks_the_job_failed_with_what_happened(database: str, redis_client: Any) -> None:
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt="boom", model="gpt-4o").to_dict()
    records.insert_job(
        job_id=job_id, priority="default", queue="llm.default", model="gpt-4o", request=payload
    )
    outcome = execute_job(job_id, payload, caller=ExplodingCaller())  # type: ignore[arg-type]
    assert outcome["status"] == "failed"
    record = records.get_job(job_id)
    assert record.status == "failed"
    assert record.error == {
        "type": "RuntimeError",
        "kind": "internal",
        "message": "a bug in the pipeline",
        "provider_calls": 0,
    }


def test_a_duplicate_delivery_of_a_job_running_elsewhere_does_not_run_it_again(
    database: str, redis_client: Any
) -> None:
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt="once", model="gpt-4o").to_dict()
    records.insert_job(
        job_id=job_id, priority="default", queue="llm.default", model="gpt-4o", request=payload
    )
    Heartbeat(redis_client, "first-worker/1").beat()  # a live worker process holds it
    assert records.mark_running(job_id, "first-worker/1") is not None
    outcome = execute_job(job_id, payload, worker="second-worker/2", caller=ExplodingCaller())  # type: ignore[arg-type]
    assert outcome == {"job_id": job_id, "status": "duplicate"}
    assert records.get_job(job_id).worker == "first-worker/1"


def test_a_job_held_by_a_worker_process_that_died_is_taken_over_at_once(
    database: str, redis_client: Any
) -> None:
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt="orphan", model="gpt-4o").to_dict()
    records.insert_job(
        job_id=job_id, priority="default", queue="llm.default", model="gpt-4o", request=payload
    )
    # its holder wrote no liveness key (or it expired: the process was killed)
    redis_client.delete(keys.worker_alive("dead-worker/1"))
    assert records.mark_running(job_id, "dead-worker/1") is not None
    outcome = execute_job(job_id, payload, worker="second-worker/2", caller=ExplodingCaller())  # type: ignore[arg-type]
    # the new run took the claim over and ran the job (here into the pipeline's bug)
    assert outcome["status"] == "failed"
    assert records.get_job(job_id).worker == "second-worker/2"


class RedisVanishingCaller:
    def call(self, *args: Any) -> Any:
        raise redis.ConnectionError("Redis went away mid-run")


def test_a_run_interrupted_by_redis_going_away_gives_its_claim_back_for_the_retry(
    database: str, redis_client: Any
) -> None:
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt="interrupted", model="gpt-4o").to_dict()
    records.insert_job(
        job_id=job_id, priority="default", queue="llm.default", model="gpt-4o", request=payload
    )
    records.mark_published(job_id)
    with pytest.raises(DependencyUnavailableError, match="redis"):
        execute_job(job_id, payload, worker="w/1", caller=RedisVanishingCaller())  # type: ignore[arg-type]
    record = records.get_job(job_id)
    # not failed, not left "running" under a live worker: queued again, and in the outbox (unpublished)
    # in case the task's retry message could not be sent either
    assert record.status == "queued" and record.published_at is None and record.error is None
