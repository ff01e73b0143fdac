"""The job table: every state change of a job is one small Core statement in its own transaction.

Core rather than ORM sessions: these run several times per job on every worker thread, and one
``UPDATE ... RETURNING`` is both cheaper and atomic. The statements every job runs (insert, published,
claim, succeeded, failed) are built once with bound parameters: building a Core statement and computing
its cache key on each call cost more CPU than SQLite took to run it (a claim: 0.86 ms built per call,
0.31 ms prebuilt).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import (
    has_replicas,
    read_session_scope,
    read_transaction,
    session_scope,
    transaction,
)
from ultra_tasks.db.models import JobRecord
from ultra_tasks.errors import JobNotFoundError
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.keys import QUEUE_DEFAULT, QUEUE_HIGH, QUEUE_LOW

jobs = cast(Table, JobRecord.__table__)
FINAL = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.EXPIRED.value)

_INSERT = insert(jobs).values(
    id=bindparam("job_id"),
    status=JobStatus.QUEUED.value,
    priority=bindparam("priority"),
    queue=bindparam("queue"),
    model=bindparam("model"),
    request=bindparam("request"),
    attempts=0,
    created_at=bindparam("now"),
    updated_at=bindparam("now"),
    expires_at=bindparam("expires_at"),
    idempotency_key=bindparam("idempotency_key"),
)
_PUBLISHED = update(jobs).where(jobs.c.id == bindparam("job_id")).values(published_at=bindparam("now"))
#: only a queued or parked job, or one "running" with no sign of life since ``stale_before``
_CLAIM = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("job_id"),
        (jobs.c.status == JobStatus.QUEUED.value)
        | (jobs.c.status == JobStatus.PARKED.value)
        | ((jobs.c.status == JobStatus.RUNNING.value) & (jobs.c.updated_at < bindparam("stale_before"))),
    )
    .values(
        status=JobStatus.RUNNING.value,
        started_at=func.coalesce(jobs.c.started_at, bindparam("now")),
        worker=bindparam("worker"),
        updated_at=bindparam("now"),
        parked_until=None,
        status_reason=None,
    )
    .returning(jobs.c.attempts, jobs.c.expires_at, jobs.c.queue)
)
_SUCCEEDED = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(
        status=JobStatus.SUCCEEDED.value,
        attempts=jobs.c.attempts + bindparam("calls"),
        result=bindparam("result"),
        error=None,
        provider=bindparam("provider"),
        model_used=bindparam("model_used"),
        latency_ms=bindparam("latency_ms"),
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
)
_FAILED = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(
        status=JobStatus.FAILED.value,
        attempts=jobs.c.attempts + bindparam("calls"),
        error=bindparam("error"),
        provider=bindparam("provider"),
        model_used=bindparam("model_used"),
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
    )
)


@dataclass(frozen=True)
class RunStart:
    """What a worker needs to know when it picks a job up."""

    status: JobStatus
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    expires_at: datetime | None = None
    #: the queue the job belongs to (the starvation guard may have moved it up)
    queue: str | None = None
    #: who holds the job when this run could not claim it
    holder: str | None = None
    #: False when another run holds the job (a duplicate message): this one must not run it
    claimed: bool = True


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
                _INSERT,
                {
                    "job_id": job_id,
                    "priority": priority,
                    "queue": queue,
                    "model": model,
                    "request": request,
                    "now": now,
                    "expires_at": expires_at,
                    "idempotency_key": idempotency_key,
                },
            )
    except IntegrityError:
        existing = find_by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing
    return job_id


def find_by_idempotency_key(key: str) -> str | None:
    # the primary, never a replica: a lagging replica would miss a key just used and let a duplicate in
    with transaction() as conn:
        found = conn.execute(select(jobs.c.id).where(jobs.c.idempotency_key == key)).scalar_one_or_none()
    return str(found) if found is not None else None


def mark_published(job_id: str) -> None:
    with transaction() as conn:
        conn.execute(_PUBLISHED, {"job_id": job_id, "now": utcnow()})


def mark_expired(job_id: str, at: datetime | None = None) -> None:
    now = at or utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=JobStatus.EXPIRED.value, finished_at=now, updated_at=now)
        )


def jobs_to_republish(
    unpublished_for_s: float, running_for_s: float, limit: int = 500, parked_overdue_s: float = 300.0
) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, queue, request) of jobs recorded but never published, running far past their time limit
    (their worker died), or parked and overdue by ``parked_overdue_s`` (their entry in Redis was lost):
    the sweeper publishes them again; a second run is harmless (idempotent)."""
    now = utcnow()
    overdue = (jobs.c.status == JobStatus.PARKED.value) & (
        jobs.c.parked_until < now - timedelta(seconds=parked_overdue_s)
    )
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
            .where(unpublished | stuck | overdue)
            .order_by(jobs.c.created_at)
            .limit(limit)
        ).all()
    return [(r.id, r.queue, r.request) for r in rows]


def running_jobs(claimed_before_s: float, limit: int = 1000) -> list[tuple[str, str, dict[str, Any], str]]:
    """(id, queue, request, holder) of jobs running since at least ``claimed_before_s`` seconds."""
    cutoff = utcnow() - timedelta(seconds=claimed_before_s)
    with transaction() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.queue, jobs.c.request, jobs.c.worker)
            .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.updated_at < cutoff)
            .order_by(jobs.c.updated_at)
            .limit(limit)
        ).all()
    return [(r.id, r.queue, r.request, r.worker or "") for r in rows]


def published_waiting(published_before_s: float, limit: int = 1000) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, queue, request) of jobs published at least ``published_before_s`` seconds ago and never
    started (still queued)."""
    cutoff = utcnow() - timedelta(seconds=published_before_s)
    with transaction() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.queue, jobs.c.request)
            .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.published_at < cutoff)
            .order_by(jobs.c.published_at)
            .limit(limit)
        ).all()
    return [(r.id, r.queue, r.request) for r in rows]


def promote_starved(age_s: float, limit: int = 500) -> list[tuple[str, str, dict[str, Any]]]:
    """Move jobs that waited longer than ``age_s`` in llm.low or llm.default one queue up; returns
    (id, new queue, request) to publish there. The message left behind finds the job done and returns its
    recorded outcome without calling a provider (execution is idempotent by job id)."""
    now = utcnow()
    with transaction() as conn:
        ids = (
            conn.execute(
                select(jobs.c.id)
                .where(
                    jobs.c.status == JobStatus.QUEUED.value,
                    jobs.c.queue.in_((QUEUE_LOW, QUEUE_DEFAULT)),
                    jobs.c.published_at < now - timedelta(seconds=age_s),
                )
                .order_by(jobs.c.created_at)
                .limit(limit)
            )
            .scalars()
            .all()
        )
        if not ids:
            return []
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.status == JobStatus.QUEUED.value)
            .values(
                queue=case((jobs.c.queue == QUEUE_LOW, QUEUE_DEFAULT), else_=QUEUE_HIGH),
                published_at=now,
                updated_at=now,
            )
            .returning(jobs.c.id, jobs.c.queue, jobs.c.request)
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
    """The job's row, from a read replica when there are some: it may be a moment old (a status that has
    just changed), which suits status() and result() polling; nothing decides a write from it."""
    with read_session_scope() as s:
        record = s.get(JobRecord, job_id)
    if record is None and has_replicas():
        with session_scope() as s:  # a job recorded a moment ago may not have reached the replica yet
            record = s.get(JobRecord, job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    return record


def mark_running(job_id: str, worker: str | None, stale_after_s: float = 3600.0) -> RunStart | None:
    """Claim the job for a run. ``attempts`` counts provider calls so far (the budget spans runs).

    Only a queued or parked job, or one "running" with no sign of life for ``stale_after_s`` (its worker
    died), can be claimed, so a duplicate message (redelivery, a sweep, the starvation guard) never runs a
    job twice at once. Otherwise the job is returned as it is: final (its outcome is reused) or RUNNING
    elsewhere (``claimed`` False). None if it was never recorded.
    """
    now = utcnow()
    params = {
        "job_id": job_id,
        "now": now,
        "worker": worker,
        "stale_before": now - timedelta(seconds=stale_after_s),
    }
    with transaction() as conn:
        row = conn.execute(_CLAIM, params).first()
        if row is not None:
            expires = row.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            return RunStart(JobStatus.RUNNING, int(row.attempts), expires_at=expires, queue=row.queue)
        current = conn.execute(
            select(jobs.c.status, jobs.c.attempts, jobs.c.result, jobs.c.error, jobs.c.worker).where(
                jobs.c.id == job_id
            )
        ).first()
    if current is None:
        return None
    return RunStart(
        JobStatus(current.status),
        int(current.attempts),
        current.result,
        current.error,
        holder=current.worker,
        claimed=False,
    )


def unclaim(job_id: str, worker: str) -> None:
    """Give back a claim this worker holds (its run was interrupted by an outage, not by the job):
    queued again and unpublished, so the sweeper publishes it even if the task's retry message could not
    be sent (a duplicate of a retry that was sent is harmless)."""
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker == worker)
            .values(status=JobStatus.QUEUED.value, published_at=None, updated_at=utcnow())
        )


def take_over(job_id: str, dead_holder: str, worker: str | None) -> RunStart | None:
    """Claim a running job from a holder known to be dead; None if it is no longer held by it."""
    now = utcnow()
    with transaction() as conn:
        row = conn.execute(
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status == JobStatus.RUNNING.value,
                jobs.c.worker == dead_holder,
            )
            .values(worker=worker, updated_at=now)
            .returning(jobs.c.attempts, jobs.c.expires_at, jobs.c.queue)
        ).first()
    if row is None:
        return None
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return RunStart(JobStatus.RUNNING, int(row.attempts), expires_at=expires, queue=row.queue)


def mark_started(job_id: str, worker: str | None, at: datetime) -> None:
    """A run that started while the database was down, recorded afterwards (from the write buffer):
    only a job still waiting takes it; one that already finished keeps its outcome."""
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.PARKED.value)))
            .values(
                status=JobStatus.RUNNING.value,
                started_at=func.coalesce(jobs.c.started_at, at),
                worker=worker,
                updated_at=at,
                parked_until=None,
                status_reason=None,
            )
        )


def mark_parked(job_id: str, wait_s: float, reason: str, calls: int = 0, at: datetime | None = None) -> None:
    """The job cannot run now: parked for ``wait_s`` (or until what it waits for recovers), with why,
    keeping the count of provider calls this run made."""
    now = at or utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
            .values(
                status=JobStatus.PARKED.value,
                attempts=jobs.c.attempts + calls,
                parked_until=now + timedelta(seconds=max(0.0, wait_s)),
                status_reason=reason[:500],
                updated_at=now,
            )
        )


def mark_released(job_id: str) -> None:
    """A parked job is back on its queue."""
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PARKED.value)
            .values(status=JobStatus.QUEUED.value, published_at=now, status_reason=None, updated_at=now)
        )


def mark_succeeded(job_id: str, result: dict[str, Any], calls: int = 0, at: datetime | None = None) -> None:
    params = {
        "job_id": job_id,
        "calls": calls,
        "result": result,
        "provider": result.get("provider"),
        "model_used": result.get("model"),
        "latency_ms": result.get("latency_ms"),
        "now": at or utcnow(),
    }
    with transaction() as conn:
        conn.execute(_SUCCEEDED, params)


def mark_failed(job_id: str, error: dict[str, Any], calls: int = 0, at: datetime | None = None) -> None:
    params = {
        "job_id": job_id,
        "calls": calls,
        "error": error,
        "provider": error.get("provider"),
        "model_used": error.get("model"),
        "now": at or utcnow(),
    }
    with transaction() as conn:
        conn.execute(_FAILED, params)


def count_jobs(status: JobStatus | None = None) -> int:
    """From a read replica when there are some (a count for display; it may lag a moment)."""
    with read_transaction() as conn:
        q = select(func.count()).select_from(jobs)
        if status is not None:
            q = q.where(jobs.c.status == status.value)
        return int(conn.execute(q).scalar_one())


def list_jobs(limit: int = 50, status: JobStatus | None = None) -> list[JobRecord]:
    """The newest jobs, from a read replica when there are some (for display; it may lag a moment)."""
    with read_session_scope() as s:
        q = select(JobRecord).order_by(JobRecord.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(JobRecord.status == status.value)
        return list(s.execute(q).scalars())
