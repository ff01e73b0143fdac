"""Job retention: finished jobs older than JOB_RETENTION leave the job table, a small batch at a time.

Only final rows (succeeded, failed, expired) whose ``finished_at`` is before the cutoff are deleted; a
queued, running or parked job is never touched, however old. Each batch is one short ``DELETE ... WHERE id
IN (SELECT ... LIMIT n)`` in its own transaction (the ``finished_at`` index finds the rows), so it locks
only the rows it deletes and only for as long as that statement runs; a pause between batches lets other
writers and the replicas keep up, and a cap per run bounds how long one run takes (the next run goes on).
Running it twice at once, or again after a crash, deletes nothing twice: it is idempotent.

The beat task ``ultra.ops.retention`` (health/tasks.py) runs it; operators run ``ultra jobs purge
--older-than 30d [--dry-run]``. A cost ledger, when there is one, keeps its own rows: this deletes jobs
only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from sqlalchemy import ColumnElement, delete, func, select, text

from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.db.engine import read_transaction, transaction
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.records import FINAL, jobs

log = logging.getLogger(__name__)

#: rows one transaction deletes
BATCH_ROWS = 500
#: seconds between two batches
BATCH_PAUSE_S = 0.05
#: rows one run deletes at most (the next run goes on)
MAX_ROWS_PER_RUN = 50_000


@dataclass(frozen=True)
class PurgeReport:
    """What a purge deleted (or, in a dry run, would delete)."""

    cutoff: datetime
    #: rows deleted; in a dry run, rows that would be deleted (the cap per run aside)
    deleted: int
    batches: int
    dry_run: bool
    #: oldest and newest ``finished_at`` among the rows concerned (None when there were none)
    oldest_finished_at: datetime | None = None
    newest_finished_at: datetime | None = None
    #: the run stopped at its cap: more rows may be due (the next run goes on)
    capped: bool = False


def _due(cutoff: datetime) -> ColumnElement[bool]:
    return jobs.c.status.in_(FINAL) & (jobs.c.finished_at < cutoff)


def purge_finished(
    older_than_s: float,
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    pause_s: float = BATCH_PAUSE_S,
    max_rows: int = MAX_ROWS_PER_RUN,
    now: datetime | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PurgeReport:
    """Delete finished jobs whose ``finished_at`` is more than ``older_than_s`` seconds ago, in batches of
    ``batch_rows`` (each its own transaction), ``pause_s`` apart, at most ``max_rows`` in this run.
    ``dry_run`` deletes nothing and reports what would go. ``on_batch(batch number, rows deleted so far)``
    is called after each committed batch (progress for the command line).

    ``DependencyUnavailableError`` if the database is unreachable; the batches committed before stay
    deleted (the next run goes on)."""
    if older_than_s <= 0:
        raise ValueError("older_than_s must be positive")
    if batch_rows < 1 or max_rows < 1:
        raise ValueError("batch_rows and max_rows must be at least 1")
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_s)
    due = _due(cutoff)
    if dry_run:
        with transaction() as conn:
            row = conn.execute(
                select(func.count(), func.min(jobs.c.finished_at), func.max(jobs.c.finished_at)).where(due)
            ).one()
        return PurgeReport(cutoff, int(row[0]), 0, True, row[1], row[2])

    deleted = batches = 0
    oldest = newest = None
    capped = False
    while True:
        size = min(batch_rows, max_rows - deleted)
        if size <= 0:
            capped = True
            break
        ids = select(jobs.c.id).where(due).order_by(jobs.c.finished_at).limit(size)
        with transaction() as conn:
            rows = conn.execute(
                delete(jobs).where(jobs.c.id.in_(ids), due).returning(jobs.c.finished_at)
            ).all()
        if not rows:
            break
        batches += 1
        deleted += len(rows)
        # batches go oldest first: the first batch holds the oldest row, each later one the newest so far
        finished = [r[0] for r in rows if r[0] is not None]
        oldest = oldest or min(finished, default=None)
        newest = max(finished, default=newest)
        if on_batch is not None:
            on_batch(batches, deleted)
        if len(rows) < size:
            break
        time.sleep(pause_s)
    if deleted:
        log.info("retention: deleted %d jobs finished before %s in %d batches", deleted, cutoff, batches)
    return PurgeReport(cutoff, deleted, batches, False, oldest, newest, capped)


_PG_SIZE = text(
    "SELECT reltuples::bigint, pg_total_relation_size(oid) FROM pg_class WHERE oid = 'jobs'::regclass"
)


class JobTableSummary(TypedDict):
    """What ``job_table_summary`` returns (the JSON of `ultra status` and the status page)."""

    rows: int
    rows_estimated: bool
    size_bytes: int | None
    oldest_created_at: str | None
    oldest_finished_at: str | None
    retention_s: float | None


def job_table_summary() -> JobTableSummary:
    """Size of the job table and its oldest kept job, for `ultra status` and the status page: rows, oldest
    ``created_at`` and oldest ``finished_at``, and on PostgreSQL its size on disk in bytes.

    Each minimum is read through an index (one look per status on (status, created_at), one on
    finished_at), so this stays cheap on a large table; on PostgreSQL the row count is the planner's
    estimate once the table is past a million rows (``rows_estimated``)."""
    with read_transaction() as conn:
        firsts = [
            conn.execute(select(func.min(jobs.c.created_at)).where(jobs.c.status == s.value)).scalar()
            for s in JobStatus
        ]
        oldest_finished = conn.execute(select(func.min(jobs.c.finished_at))).scalar()
        size_bytes = None
        rows: int | None = None
        estimated = False
        if conn.dialect.name == "postgresql":
            estimate, size_bytes = conn.execute(_PG_SIZE).one()
            if estimate is not None and estimate > 1_000_000:
                rows, estimated = int(estimate), True
        if rows is None:
            rows = int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())
    oldest = min((f for f in firsts if f is not None), default=None)
    retention = get_settings().job_retention
    return {
        "rows": rows,
        "rows_estimated": estimated,
        "size_bytes": int(size_bytes) if size_bytes is not None else None,
        "oldest_created_at": _iso(oldest),
        "oldest_finished_at": _iso(oldest_finished),
        "retention_s": retention,
    }


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()
