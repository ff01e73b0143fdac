"""The job table: every state change of a job is one small Core statement in its own transaction.

Core rather than ORM sessions: these run several times per job on every worker thread, and one
``UPDATE ... RETURNING`` is both cheaper and atomic. The statements every job runs (insert, published,
claim, succeeded, failed) are built once with bound parameters: building a Core statement and computing
its cache key on each call costs more CPU than SQLite takes to run it (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ultra_tasks.billing import ledger as billing_ledger
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
    tenant=bindparam("tenant"),
)
_PUBLISHED = update(jobs).where(jobs.c.id == bindparam("job_id")).values(published_at=bindparam("now"))
#: claimable: queued or parked, or running under a lease that lapsed (or, for a row from before leases, with
#: no sign of life since ``stale_before``), or running under this owner's own lease when the owner knows
#: no run of its own holds it (``own``: a run of this process ended without giving the lease back)


def _status_is(*values: str) -> ColumnElement[bool]:
    """``status IN (...)`` for fixed values, as equalities: an IN list is an expanding parameter that
    SQLAlchemy re-renders on every execution, a cost the hot path's statements do not need to pay."""
    return or_(*(jobs.c.status == value for value in values))


_CLAIMABLE = _status_is(JobStatus.QUEUED.value, JobStatus.PARKED.value) | (
    (jobs.c.status == JobStatus.RUNNING.value)
    & (
        (jobs.c.lease_expires_at < bindparam("now"))
        | (jobs.c.worker == bindparam("own"))
        | (jobs.c.lease_expires_at.is_(None) & (jobs.c.updated_at < bindparam("stale_before")))
    )
)
_CLAIM_VALUES: dict[str, Any] = {
    "status": JobStatus.RUNNING.value,
    "started_at": func.coalesce(jobs.c.started_at, bindparam("now")),
    "worker": bindparam("worker"),
    "updated_at": bindparam("now"),
    "lease_expires_at": bindparam("lease_expires_at"),
    "parked_until": None,
    "status_reason": None,
}
#: the claim of a run whose token Redis issued: it must be newer than any the row has seen
_CLAIM = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("job_id"),
        _CLAIMABLE,
        jobs.c.lease_token.is_(None) | (jobs.c.lease_token < bindparam("token")),
    )
    .values(**_CLAIM_VALUES, lease_token=bindparam("token"))
    .returning(jobs.c.attempts, jobs.c.expires_at, jobs.c.queue, jobs.c.lease_token, jobs.c.created_at)
)
#: the claim of a run while Redis is down: the database issues the token (the clock's microseconds, or one
#: past the row's token when that is newer), so tokens keep growing whichever store issued them
_CLAIM_SQL_ONLY = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), _CLAIMABLE)
    .values(
        **_CLAIM_VALUES,
        lease_token=case(
            (jobs.c.lease_token.is_(None) | (jobs.c.lease_token < bindparam("token")), bindparam("token")),
            else_=jobs.c.lease_token + 1,
        ),
    )
    .returning(jobs.c.attempts, jobs.c.expires_at, jobs.c.queue, jobs.c.lease_token, jobs.c.created_at)
)
#: a write of a run's outcome applies while the row has seen no newer run (its token is not greater), and
#: installs the run's token: a run that held its lease only in Redis (the database was down) is recorded
#: when its buffered writes arrive, and a run whose lease was taken over writes nothing
_FENCE = jobs.c.lease_token.is_(None) | (jobs.c.lease_token <= bindparam("token"))
#: ``attempts`` is written as the run's absolute count (never added to), so a write applied twice counts once
#: a final row changes only by a write of the run that made it final (the same write applied twice)
_NOT_FINAL_OR_SAME_RUN = ~_status_is(*FINAL) | (jobs.c.lease_token == bindparam("token"))
_ATTEMPTS = case((jobs.c.attempts < bindparam("attempts"), bindparam("attempts")), else_=jobs.c.attempts)
_SUCCEEDED = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), _FENCE, _NOT_FINAL_OR_SAME_RUN)
    .values(
        status=JobStatus.SUCCEEDED.value,
        attempts=_ATTEMPTS,
        result=bindparam("result"),
        error=None,
        provider=bindparam("provider"),
        model_used=bindparam("model_used"),
        latency_ms=bindparam("latency_ms"),
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
        lease_token=bindparam("token"),
        lease_expires_at=None,
    )
)
_FAILED = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"), _FENCE, _NOT_FINAL_OR_SAME_RUN)
    .values(
        status=JobStatus.FAILED.value,
        attempts=_ATTEMPTS,
        error=bindparam("error"),
        provider=bindparam("provider"),
        model_used=bindparam("model_used"),
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
        lease_token=bindparam("token"),
        lease_expires_at=None,
    )
)
#: column sizes of values that come from outside (a provider's reply names its model)
_PROVIDER_CHARS = 64
_MODEL_CHARS = 128


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
    #: the fencing token the claim installed (its lease's)
    token: int | None = None
    #: seconds the holder's lease still runs when this run could not claim the job
    held_for_s: float = 0.0
    #: when the job was submitted (its wait ends with this claim)
    created_at: datetime | None = None


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
    guard: Callable[[Connection], None] | None = None,
    tenant: str | None = None,
) -> str:
    """Record a queued, not yet published job; returns its id. With an idempotency key already used,
    nothing is written and the earlier job's id is returned; so too with a job id already recorded (a
    submit retried after an outcome it could not know, or a spool replayed twice). ``guard`` runs first in
    the insert's transaction and refuses the insert by raising (the admission bound while Redis is down).
    ``tenant``: the API tenant that submitted it (None from Python and the CLI)."""
    now = now or utcnow()
    try:
        with transaction() as conn:
            if guard is not None:
                guard(conn)
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
                    "tenant": tenant,
                },
            )
    except IntegrityError:
        existing = find_by_idempotency_key(idempotency_key) if idempotency_key else None
        if existing is None and _exists(job_id):
            return job_id
        if existing is None:
            raise
        return existing
    return job_id


def _exists(job_id: str) -> bool:
    with transaction() as conn:
        return conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None


def find_by_idempotency_key(key: str) -> str | None:
    # the primary, never a replica: a lagging replica would miss a key just used and let a duplicate in
    with transaction() as conn:
        found = conn.execute(select(jobs.c.id).where(jobs.c.idempotency_key == key)).scalar_one_or_none()
    return str(found) if found is not None else None


def mark_published(job_id: str) -> None:
    with transaction() as conn:
        conn.execute(_PUBLISHED, {"job_id": job_id, "now": utcnow()})


def mark_published_many(job_ids: list[str], chunk: int = 500) -> None:
    """Note many jobs published, a few statements however many."""
    now = utcnow()
    for start in range(0, len(job_ids), chunk):
        with transaction() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id.in_(job_ids[start : start + chunk])).values(published_at=now)
            )


def mark_expired(job_id: str, at: datetime | None = None, token: int | None = None) -> bool:
    """The job's deadline passed before it ran; False if a newer run holds the job (nothing written)."""
    now = at or utcnow()
    with transaction() as conn:
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, _FENCE, _NOT_FINAL_OR_SAME_RUN)
            .values(
                status=JobStatus.EXPIRED.value,
                finished_at=now,
                updated_at=now,
                lease_token=bindparam("token"),
                lease_expires_at=None,
            ),
            {"token": token},
        )
    return _ended(job_id, result.rowcount > 0)


def _ended(job_id: str, written: bool) -> bool:
    """A final outcome was written: the job gives its admission slot back (jobs/admission.py). Every
    final write of a job goes through here, whether a run makes it or the write buffer applies it."""
    if written:
        from ultra_tasks.jobs.admission import release

        release(job_id)
    return written


def jobs_to_republish(
    unpublished_for_s: float,
    lease_lapsed_for_s: float,
    limit: int = 500,
    parked_overdue_s: float = 300.0,
    legacy_running_for_s: float = 3600.0,
) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, queue, request) of jobs recorded but never published, running under a lease that lapsed
    ``lease_lapsed_for_s`` ago (nobody renews it: its worker died), or parked and overdue by
    ``parked_overdue_s`` (their entry in Redis was lost): the sweeper publishes them again; a second
    delivery is harmless (the lease lets one run at a time, and a final job returns its outcome)."""
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
        (jobs.c.lease_expires_at < now - timedelta(seconds=lease_lapsed_for_s))
        | (
            jobs.c.lease_expires_at.is_(None)
            & (jobs.c.updated_at < now - timedelta(seconds=legacy_running_for_s))
        )
    )
    with transaction() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.queue, jobs.c.request)
            .where(unpublished | stuck | overdue)
            .order_by(jobs.c.created_at)
            .limit(limit)
        ).all()
    return [(r.id, r.queue, r.request) for r in rows]


def lapse_leases_of(worker: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, queue, request) of the jobs running under ``worker``'s leases, whose leases now end: the
    worker is dead (jobs/reaper.py). A run that lives after all keeps nothing: its next renewal or write
    finds its lease lapsed or taken over."""
    now = utcnow()
    with transaction() as conn:
        rows = conn.execute(
            update(jobs)
            .where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.worker == worker)
            .values(lease_expires_at=now, updated_at=now)
            .returning(jobs.c.id, jobs.c.queue, jobs.c.request)
        ).all()
    return [(str(r.id), str(r.queue), dict(r.request)) for r in rows]


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
                    # an API batch's lines wait within their batch's window instead: thousands of them
                    # moved up would shut interactive work out
                    jobs.c.batch_id.is_(None),
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


def reset_for_retry(
    job_id: str, guard: Callable[[Connection], None] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Give a failed or expired job a fresh start (a new attempt budget); (queue, request) or None.
    ``guard`` runs first in the transaction and refuses the retry by raising (the admission bound)."""
    now = utcnow()
    with transaction() as conn:
        if guard is not None:
            guard(conn)
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
                lease_expires_at=None,
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


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def claim(
    job_id: str,
    worker: str,
    *,
    token: int | None,
    lease_expires_at: datetime,
    own_takeover: bool = False,
    stale_after_s: float = 3600.0,
) -> RunStart | None:
    """Claim the job for a run under a lease (jobs/lease.py). ``token``: the one Redis issued; None when
    Redis is down (the database issues one). ``attempts`` counts provider calls so far (the budget spans
    runs).

    Only a queued or parked job, or one running under a lapsed lease, can be claimed, so a duplicate
    message (redelivery, a sweep, the starvation guard) never runs a job twice at once. Otherwise the job
    is returned as it is: final (its outcome is reused) or held by another run (``claimed`` False). None
    if it was never recorded.
    """
    now = utcnow()
    params = {
        "job_id": job_id,
        "now": now,
        "worker": worker,
        "own": worker if own_takeover else "",
        "stale_before": now - timedelta(seconds=stale_after_s),
        "lease_expires_at": lease_expires_at,
        "token": token if token is not None else int(now.timestamp() * 1_000_000),
    }
    with transaction() as conn:
        row = conn.execute(_CLAIM if token is not None else _CLAIM_SQL_ONLY, params).first()
        if row is not None:
            return RunStart(
                JobStatus.RUNNING,
                int(row.attempts),
                expires_at=_aware(row.expires_at),
                queue=row.queue,
                token=int(row.lease_token),
                created_at=_aware(row.created_at),
            )
        current = conn.execute(
            select(
                jobs.c.status,
                jobs.c.attempts,
                jobs.c.result,
                jobs.c.error,
                jobs.c.worker,
                jobs.c.lease_expires_at,
            ).where(jobs.c.id == job_id)
        ).first()
    if current is None:
        return None
    lease_end = _aware(current.lease_expires_at)
    return RunStart(
        JobStatus(current.status),
        int(current.attempts),
        current.result,
        current.error,
        holder=current.worker,
        claimed=False,
        held_for_s=max(0.0, (lease_end - now).total_seconds()) if lease_end is not None else 0.0,
    )


def count_call(job_id: str, token: int) -> int | None:
    """Record one provider call about to go out under the lease ``token`` (the path while Redis is down);
    the job's calls so far, or None if the lease is no longer this run's."""
    with transaction() as conn:
        row = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_token == token, jobs.c.status == JobStatus.RUNNING.value)
            .values(attempts=jobs.c.attempts + 1)
            .returning(jobs.c.attempts)
        ).first()
    return int(row.attempts) if row is not None else None


_RENEW = (
    update(jobs)
    .where(
        jobs.c.id == bindparam("job_id"),
        # running under this lease (or an older one), or waiting in a row that never saw this lease (the
        # run started while the database was down); a row this run itself parked is left parked
        ((jobs.c.status == JobStatus.RUNNING.value) & _FENCE)
        | (
            jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.PARKED.value))
            & (jobs.c.lease_token.is_(None) | (jobs.c.lease_token < bindparam("token")))
        ),
    )
    .values(
        status=JobStatus.RUNNING.value,
        worker=bindparam("worker"),
        lease_token=bindparam("token"),
        lease_expires_at=bindparam("lease_expires_at"),
        attempts=_ATTEMPTS,
    )
)


def renew_leases(leases: list[tuple[str, str, int, int]], lease_expires_at: datetime) -> set[str]:
    """Extend the leases (job id, worker, token, calls so far) of one process's runs in one transaction,
    writing each lease (and its calls) into a row that has not seen a newer run: a run that started while
    the database was down is recorded running as soon as it is back. Returns the ids whose lease the
    table refused: a newer run holds them, or they are final."""
    refused: set[str] = set()
    with transaction() as conn:
        for job_id, worker, token, attempts in leases:
            params = {
                "job_id": job_id,
                "worker": worker,
                "token": token,
                "attempts": attempts,
                "lease_expires_at": lease_expires_at,
            }
            if conn.execute(_RENEW, params).rowcount == 0:
                refused.add(job_id)
    return refused


def unclaim(job_id: str, token: int) -> bool:
    """Give back a claim this run holds (its run was interrupted by an outage, not by the job): queued
    again and unpublished, so the sweeper publishes it even if the task's retry message could not be sent
    (a duplicate of a retry that was sent is harmless)."""
    with transaction() as conn:
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_token == token)
            .values(
                status=JobStatus.QUEUED.value, published_at=None, lease_expires_at=None, updated_at=utcnow()
            )
        )
    return result.rowcount > 0


def mark_started(
    job_id: str, worker: str | None, at: datetime, token: int | None = None, lease_ttl_s: float = 30.0
) -> bool:
    """A run that started while the database was down, recorded afterwards (from the write buffer): only
    a job still waiting, or running under an older run's lease, takes it; a finished one keeps its
    outcome, and a newer run's claim stands."""
    with transaction() as conn:
        result = conn.execute(
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.PARKED.value, JobStatus.RUNNING.value)),
                jobs.c.lease_token.is_(None) | (jobs.c.lease_token < bindparam("token")),
            )
            .values(
                status=JobStatus.RUNNING.value,
                started_at=func.coalesce(jobs.c.started_at, at),
                worker=worker,
                updated_at=at,
                parked_until=None,
                status_reason=None,
                lease_token=bindparam("token"),
                lease_expires_at=at + timedelta(seconds=lease_ttl_s),
            ),
            {"token": token if token is not None else int(at.timestamp() * 1_000_000)},
        )
    return result.rowcount > 0


def mark_parked(
    job_id: str,
    wait_s: float,
    reason: str,
    calls: int = 0,
    at: datetime | None = None,
    token: int | None = None,
    attempts: int | None = None,
    ledger: list[dict[str, Any]] | None = None,
) -> bool:
    """The job cannot run now: parked for ``wait_s`` (or until what it waits for recovers), with why.
    ``ledger``: the run's provider calls (as ``mark_succeeded``).
    ``attempts``: the job's provider calls so far (absolute); ``calls`` (added) is for callers without a
    lease. False if the run no longer holds the job."""
    now = at or utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.PARKED.value,
        "parked_until": now + timedelta(seconds=max(0.0, wait_s)),
        "status_reason": reason[:500],
        "updated_at": now,
        "lease_expires_at": None,
    }
    params: dict[str, Any] = {}
    if attempts is not None:
        values["attempts"], params["attempts"] = _ATTEMPTS, attempts
    else:
        values["attempts"] = jobs.c.attempts + calls
    where = [jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value]
    if token is not None:
        where.append(jobs.c.lease_token == bindparam("token"))
        params["token"] = token
    with transaction() as conn:
        result = conn.execute(update(jobs).where(*where).values(**values), params)
        if ledger:
            billing_ledger.write(conn, ledger, now)
    return result.rowcount > 0


def mark_released(job_id: str) -> None:
    """A parked job is back on its queue."""
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PARKED.value)
            .values(status=JobStatus.QUEUED.value, published_at=now, status_reason=None, updated_at=now)
        )


def _bounded(value: Any, chars: int) -> str | None:
    return str(value)[:chars] if value is not None else None


def mark_succeeded(
    job_id: str,
    result: dict[str, Any],
    calls: int = 0,
    at: datetime | None = None,
    token: int | None = None,
    attempts: int | None = None,
    ledger: list[dict[str, Any]] | None = None,
) -> bool:
    """The run's answer; False if a newer run holds the job or it is final under another run. ``ledger``:
    the run's provider calls, entered in the same transaction whether or not the row takes the answer
    (a call made is a call made; each is entered once: billing/ledger.py)."""
    params = {
        "job_id": job_id,
        "attempts": attempts if attempts is not None else calls,
        "result": result,
        "provider": _bounded(result.get("provider"), _PROVIDER_CHARS),
        "model_used": _bounded(result.get("model"), _MODEL_CHARS),
        "latency_ms": result.get("latency_ms"),
        "now": at or utcnow(),
        "token": token,
    }
    with transaction() as conn:
        written = conn.execute(_SUCCEEDED, params).rowcount > 0
        if ledger:
            billing_ledger.write(conn, ledger, at)
    return _ended(job_id, written)


def mark_failed(
    job_id: str,
    error: dict[str, Any],
    calls: int = 0,
    at: datetime | None = None,
    token: int | None = None,
    attempts: int | None = None,
    ledger: list[dict[str, Any]] | None = None,
) -> bool:
    """The run's failure; False if a newer run holds the job or it is final under another run.
    ``ledger``: the run's provider calls (as ``mark_succeeded``)."""
    params = {
        "job_id": job_id,
        "attempts": attempts if attempts is not None else calls,
        "error": error,
        "provider": _bounded(error.get("provider"), _PROVIDER_CHARS),
        "model_used": _bounded(error.get("model"), _MODEL_CHARS),
        "now": at or utcnow(),
        "token": token,
    }
    with transaction() as conn:
        written = conn.execute(_FAILED, params).rowcount > 0
        if ledger:
            billing_ledger.write(conn, ledger, at)
    return _ended(job_id, written)


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
