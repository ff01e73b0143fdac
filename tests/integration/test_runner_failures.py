"""A job whose run hits an unexpected error is recorded as failed, never left running; one interrupted by
an outage is given back for its retry. (Duplicates and takeovers: test_job_lease.py.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import records
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
    assert outcome.status == "failed"
    record = records.get_job(job_id)
    assert record.status == "failed"
    assert record.error == {
        "type": "RuntimeError",
        "kind": "internal",
        "message": "a bug in the pipeline",
        "provider_calls": 0,
    }


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
