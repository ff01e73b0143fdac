"""Celery tasks of the job path."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Ignore

from ultra_tasks.celery_app import app
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.runner import execute_job

#: how long a job whose database is unreachable waits before its next try (seconds, doubled each time)
DB_RETRY_BASE_S = 2.0
DB_RETRY_MAX_S = 60.0
DB_MAX_RETRIES = 30
#: a job whose provider's breaker is open is re-queued to run when the breaker may admit a probe, but never
#: further out than this (seconds): well below the visibility timeout, so the broker never redelivers it
DEFER_MAX_S = 60.0


@app.task(name="ultra.run_job", bind=True, max_retries=None)
def run_job(self: Task, job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run one LLM job. ``payload`` is the validated request (JSON), never a callable."""
    try:
        outcome = execute_job(job_id, payload, worker=self.request.hostname)
    except DependencyUnavailableError as exc:
        if self.request.retries >= DB_MAX_RETRIES:
            raise
        delay = min(DB_RETRY_MAX_S, DB_RETRY_BASE_S * 2 ** min(self.request.retries, 10))
        raise self.retry(exc=exc, countdown=delay) from exc
    if outcome.get("status") == "duplicate":
        raise Ignore()  # acknowledged, and no result stored over the real run's
    if outcome.get("status") == "deferred":
        # Not an error and not a failed attempt: wait for the breaker without holding a worker thread.
        delay = min(DEFER_MAX_S, max(0.5, float(outcome.get("retry_after") or 0)))
        raise self.retry(countdown=delay)
    return outcome


@app.task(name="ultra.noop")
def noop(job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Does nothing: the baseline that scripts/bench_throughput.py compares the job path against."""
    return {"job_id": job_id}
