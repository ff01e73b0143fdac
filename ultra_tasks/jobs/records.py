"""The job table: every state change of a job is one small Core statement in its own transaction.

Core rather than ORM sessions: these run several times per job on every worker thread, and one
``UPDATE ... RETURNING`` is both cheaper and atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import session_scope, transaction
from ultra_tasks.db.models import JobRecord
from ultra_tasks.errors import JobNotFoundError
from ultra_tasks.jobs.models import JobStatus

jobs = cast(Table, JobRecord.__table__)
FINAL = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.EXPIRED.value)


@dataclass(frozen=True)
class RunStart:
    """What a worker needs to know when it picks a job up."""

    status: JobStatus
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    expires_at: datetime | None = None


def insert_job(
    *,
    job_id: str,
    priority: str,
    queue: str,
    model: str,
    request: dict[str, Any],
    now: datetime | None = None,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Record a queued, not yet published job; returns its id. With an idempotency key already used,
    nothing is written and the earlier job's id is returned."""
    now = now or utcnow()
    try:
        with transaction() as conn:
            conn.execute(
                insert(jobs).values(
                    id=job_id,
                    status=JobStatus.QUEUED.value,
                    priority=priority,
                    queue=queue,
                    model=model,
                    request=request,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    expires_at=expires_at,
                    idempotency_key=idempotency_key,
                )
            )
    except IntegrityError:
        existing = find_by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing
    return job_id


def find_by_idempotency_key(key: str) -> str | None:
    with transaction() as conn:
        found = conn.execute(select(jobs.c.id).where(jobs.c.idempotency_key == key)).scalar_one_or_none()
    return str(found) if found is not None else None


def mark_published(job_id: str) -> None:
    with transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(published_at=utcnow()))


def mark_expired(job_id: str) -> None:
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=JobStatus.EXPIRED.value, finished_at=now, updated_at=now)
        )


def jobs_to_republish(
    unpublished_for_s: float, running_for_s: float, limit: int = 500
) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, queue, request) of jobs recorded but never published, or running far past their time limit
    (their worker died): the sweeper publishes them again; a second run is harmless (idempotent)."""
    now = utcnow()
    unpublished = (
        (jobs.c.status == JobStatus.QUEUED.value)
        & jobs.c.published_at.is_(None)
        & (jobs.c.created_at < now - timedelta(seconds=unpublished_for_s))
    )
    stuck = (jobs.c.status == JobStatus.RUNNING.value) & (
        jobs.c.updated_at < now - timedelta(seconds=running_for_s)
    )
    with transaction() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.queue, jobs.c.request)
            .where(unpublished | stuck)
            .order_by(jobs.c.created_at)
            .limit(limit)
        ).all()
    return [(r.id, r.queue, r.request) for r in rows]


def reset_for_retry(job_id: str) -> tuple[str, dict[str, Any]] | None:
    """Give a failed or expired job a fresh start (a new attempt budget); (queue, request) or None."""
    now = utcnow()
    with transaction() as conn:
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_((JobStatus.FAILED.value, JobStatus.EXPIRED.value)))
            .values(
                status=JobStatus.QUEUED.value,
                attempts=0,
                error=None,
                result=None,
                published_at=None,
                started_at=None,
                finished_at=None,
                expires_at=None,
                updated_at=now,
            )
            .returning(jobs.c.queue, jobs.c.request)
        ).first()
    return (row.queue, row.request) if row is not None else None


def get_job(job_id: str) -> JobRecord:
    with session_scope() as s:
        record = s.get(JobRecord, job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record


def mark_running(job_id: str, worker: str | None) -> RunStart | None:
    """Start a run. ``attempts`` counts provider calls so far (the job's budget is spent across runs).

    A job already final is returned as it is (redelivery); None if it was never recorded.
    """
    now = utcnow()
    with transaction() as conn:
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.not_in(FINAL))
            .values(
                status=JobStatus.RUNNING.value,
                started_at=func.coalesce(jobs.c.started_at, now),
                worker=worker,
                updated_at=now,
            )
            .returning(jobs.c.attempts, jobs.c.expires_at)
        ).first()
        if row is not None:
            expires = row.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            return RunStart(JobStatus.RUNNING, int(row.attempts), expires_at=expires)
        final = conn.execute(
            select(jobs.c.status, jobs.c.attempts, jobs.c.result, jobs.c.error).where(jobs.c.id == job_id)
        ).first()
    if final is None:
        return None
    return RunStart(JobStatus(final.status), int(final.attempts), final.result, final.error)


def mark_deferred(job_id: str, calls: int = 0) -> None:
    """No provider could be called now: back to queued, keeping the count of calls this run made."""
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
            .values(status=JobStatus.QUEUED.value, attempts=jobs.c.attempts + calls, updated_at=utcnow())
        )


def mark_succeeded(job_id: str, result: dict[str, Any], calls: int = 0) -> None:
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=JobStatus.SUCCEEDED.value,
                attempts=jobs.c.attempts + calls,
                result=result,
                error=None,
                provider=result.get("provider"),
                model_used=result.get("model"),
                latency_ms=result.get("latency_ms"),
                finished_at=now,
                updated_at=now,
            )
        )


def mark_failed(job_id: str, error: dict[str, Any], calls: int = 0) -> None:
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=JobStatus.FAILED.value,
                attempts=jobs.c.attempts + calls,
                error=error,
                provider=error.get("provider"),
                model_used=error.get("model"),
                finished_at=now,
                updated_at=now,
            )
        )


def count_jobs(status: JobStatus | None = None) -> int:
    with transaction() as conn:
        q = select(func.count()).select_from(jobs)
        if status is not None:
            q = q.where(jobs.c.status == status.value)
        return int(conn.execute(q).scalar_one())


def list_jobs(limit: int = 50, status: JobStatus | None = None) -> list[JobRecord]:
    with session_scope() as s:
        q = select(JobRecord).order_by(JobRecord.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(JobRecord.status == status.value)
        return list(s.execute(q).scalars())
