"""A job whose run hits an unexpected error is recorded as failed, never left running."""

from __future__ import annotations

import uuid
from typing import Any

from ultra_tasks.config import get_settings
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
    assert records.mark_running(job_id, "first-worker") is not None  # another worker holds it
    outcome = execute_job(job_id, payload, worker="second-worker", caller=ExplodingCaller())  # type: ignore[arg-type]
    assert outcome == {"job_id": job_id, "status": "duplicate"}
    assert records.get_job(job_id).worker == "first-worker"
