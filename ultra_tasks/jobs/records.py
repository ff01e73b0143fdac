"""The job table: every state change of a job is one small transaction here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import JobRecord
from ultra_tasks.errors import JobNotFoundError
from ultra_tasks.jobs.models import JobStatus


def insert_job(
    *, job_id: str, priority: str, queue: str, model: str, request: dict[str, Any], now: datetime | None = None
) -> None:
    now = now or utcnow()
    with session_scope() as s:
        s.add(
            JobRecord(
                id=job_id,
                status=JobStatus.QUEUED.value,
                priority=priority,
                queue=queue,
                model=model,
                request=request,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
        )


def delete_job(job_id: str) -> None:
    """Undo an insert whose publish failed, so no half-made job stays behind."""
    with session_scope() as s:
        record = s.get(JobRecord, job_id)
        if record is not None and record.status == JobStatus.QUEUED.value:
            s.delete(record)


def get_job(job_id: str) -> JobRecord:
    with session_scope() as s:
        record = s.get(JobRecord, job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record


def mark_running(job_id: str, worker: str | None) -> JobRecord | None:
    """Start an attempt; returns the record, or None if the job is unknown (never recorded)."""
    now = utcnow()
    with session_scope() as s:
        record = s.get(JobRecord, job_id, with_for_update=True)
        if record is None:
            return None
        if JobStatus(record.status).is_final:
            return record
        record.status = JobStatus.RUNNING.value
        record.attempts = (record.attempts or 0) + 1
        record.started_at = record.started_at or now
        record.worker = worker
        record.updated_at = now
        return record


def mark_succeeded(job_id: str, result: dict[str, Any]) -> None:
    now = utcnow()
    with session_scope() as s:
        s.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(
                status=JobStatus.SUCCEEDED.value,
                result=result,
                error=None,
                provider=result.get("provider"),
                model_used=result.get("model"),
                latency_ms=result.get("latency_ms"),
                finished_at=now,
                updated_at=now,
            )
        )


def mark_failed(job_id: str, error: dict[str, Any]) -> None:
    now = utcnow()
    with session_scope() as s:
        s.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(
                status=JobStatus.FAILED.value,
                error=error,
                provider=error.get("provider"),
                model_used=error.get("model"),
                finished_at=now,
                updated_at=now,
            )
        )


def count_jobs(status: JobStatus | None = None) -> int:
    with session_scope() as s:
        q = select(func.count()).select_from(JobRecord)
        if status is not None:
            q = q.where(JobRecord.status == status.value)
        return int(s.execute(q).scalar_one())


def list_jobs(limit: int = 50, status: JobStatus | None = None) -> list[JobRecord]:
    with session_scope() as s:
        q = select(JobRecord).order_by(JobRecord.created_at.desc()).limit(limit)
        if status is not None:
            q = q.where(JobRecord.status == status.value)
        return list(s.execute(q).scalars())
