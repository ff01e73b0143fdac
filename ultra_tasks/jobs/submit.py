"""The producer API: ``submit(...)`` validates, records and publishes a job; ``JobHandle`` follows it."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.errors import (
    DependencyUnavailableError,
    JobFailedError,
    JobTimeoutError,
    JobValidationError,
)
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.jobs.validation import build_request, validate_chain, validate_metadata, validate_priority
from ultra_tasks.keys import PRIORITY_QUEUES

log = logging.getLogger(__name__)

_FINAL_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)
#: Celery task name of the job path
RUN_JOB_TASK = "ultra.run_job"


def submit(
    prompt: str | None = None,
    *,
    messages: list[dict[str, str]] | None = None,
    model: str,
    priority: str = "default",
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    params: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    cache: bool = True,
    fallback: bool = True,
    chain: list[str] | None = None,
) -> JobHandle:
    """Validate, record and enqueue one LLM job; return its handle.

    Bad input raises ``JobValidationError`` naming the field, before anything is recorded or enqueued.
    A broker that cannot be reached raises ``DependencyUnavailableError`` and leaves no record behind.
    ``cache=False`` makes this job skip the result cache (deterministic requests use it by default).
    ``fallback=False`` keeps it on the requested model; ``chain=["openai:gpt-4o", "anthropic:..."]``
    replaces its fallback chain.
    """
    settings = get_settings()
    priority = validate_priority(priority)
    request = build_request(
        settings,
        prompt=prompt,
        messages=messages,
        system=system,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
    )
    payload = request.to_dict()
    payload["metadata"] = validate_metadata(metadata)
    if not isinstance(cache, bool):
        raise JobValidationError("cache", f"expected true or false, got {cache!r}")
    payload["cache"] = cache
    if not isinstance(fallback, bool):
        raise JobValidationError("fallback", f"expected true or false, got {fallback!r}")
    payload["fallback"] = fallback
    if chain is not None:
        payload["chain"] = validate_chain(chain, settings)

    job_id = str(uuid.uuid4())
    queue = PRIORITY_QUEUES[priority]
    upgrade_schema()
    records.insert_job(job_id=job_id, priority=priority, queue=queue, model=request.model, request=payload)
    try:
        app.send_task(RUN_JOB_TASK, args=[job_id, payload], task_id=job_id, queue=queue, routing_key=queue)
    except (KombuOperationalError, RedisError, OSError) as exc:
        records.delete_job(job_id)
        raise DependencyUnavailableError("broker", str(exc)) from exc
    return JobHandle(job_id)


class JobHandle:
    """Follows one job by id, from any process: ``JobHandle(job_id)``."""

    #: how often result() re-reads the job table when the result backend has nothing (seconds)
    POLL_INTERVAL_S = 0.5

    def __init__(self, job_id: str) -> None:
        self.id = str(job_id)

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> JobStatus:
        """The job's current status, from the job table (the result backend if the database is down)."""
        try:
            return JobStatus(records.get_job(self.id).status)
        except DependencyUnavailableError:
            outcome = self._backend_outcome()
            if outcome is None:
                raise
            return JobStatus(outcome.get("status", JobStatus.SUCCEEDED.value))

    def record(self) -> dict[str, Any]:
        """The job's row as a dict: status, request, result or error, provider, model, attempts, timings."""
        r = records.get_job(self.id)
        return {
            "id": r.id,
            "status": r.status,
            "priority": r.priority,
            "queue": r.queue,
            "model": r.model,
            "request": r.request,
            "result": r.result,
            "error": r.error,
            "provider": r.provider,
            "model_used": r.model_used,
            "attempts": r.attempts,
            "latency_ms": r.latency_ms,
            "worker": r.worker,
            "created_at": r.created_at.isoformat(),
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        }

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job to finish and return its result.

        Raises ``JobFailedError`` if it failed and ``JobTimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        outcome = self._backend_outcome(wait=timeout)
        while outcome is None:
            outcome = self._table_outcome()
            if outcome is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(self.id, timeout or 0.0)
            time.sleep(self.POLL_INTERVAL_S)
            outcome = self._backend_outcome()
        if outcome.get("status") == JobStatus.FAILED.value:
            raise JobFailedError(self.id, outcome.get("error") or {})
        return JobResult.from_dict(outcome)

    def _backend_outcome(self, wait: float | None = 0) -> dict[str, Any] | None:
        """The final outcome from Celery's result backend, waiting up to ``wait`` seconds (None: forever).

        Anything else the backend holds (a retry's exception info while the job waits) is not an outcome.
        """
        res = AsyncResult(self.id, app=app)
        try:
            if wait == 0:
                value = res.result if res.successful() else None
            else:
                value = res.get(timeout=wait, propagate=False, disable_sync_subtasks=False)
        except CeleryTimeoutError:
            return None
        except (RedisError, KombuOperationalError, OSError) as exc:
            log.warning("result backend unreachable for job %s: %s", self.id, exc)
            return None
        if isinstance(value, dict) and value.get("status") in _FINAL_STATUSES:
            return value
        return None

    def _table_outcome(self) -> dict[str, Any] | None:
        try:
            r = records.get_job(self.id)
        except DependencyUnavailableError:
            return None
        if r.status == JobStatus.SUCCEEDED.value and r.result:
            return r.result
        if r.status == JobStatus.FAILED.value:
            return {"status": r.status, "error": r.error or {}}
        return None
