"""Batches in SQL: made with every line's job in one transaction, counted from their jobs, finished into
an output file and an error file with exactly one line per ``custom_id``.

A batch's jobs are ordinary jobs (the job table, the queues, the workers, Flower, metrics) that carry its
id. They wait in their priority's queue (``low`` unless the batch's metadata says ``priority``) and are
bounded by API_BATCH_MAX_LINES per batch rather than QUEUE_MAX_SIZE (jobs/admission.py), so a large batch
does not shut interactive requests out. Each job expires with the batch's completion window.

A batch is brought up to date when it is read (``retrieve``) and by beat (``finish_due``): once none of its
jobs is live it is finished
in one transaction whose conditional update on the batch's status lets exactly one reader write its files.
Past its window, its jobs not started are expired first. Cancelling expires the jobs not started; running
ones finish.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, update

from ultra_tasks.api import completions, file_store
from ultra_tasks.api.batch_input import parse_input
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings
from ultra_tasks.db.engine import transaction
from ultra_tasks.db.models import Batch, BatchLine
from ultra_tasks.errors import ApiError
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.records import jobs
from ultra_tasks.jobs.submit import publish_many
from ultra_tasks.jobs.validation import validate_priority, validate_submission
from ultra_tasks.keys import PRIORITY_QUEUES

batches_t: Table = Batch.__table__  # type: ignore[assignment]
lines_t: Table = BatchLine.__table__  # type: ignore[assignment]

ENDPOINTS = ("/v1/chat/completions",)
WINDOWS = {"24h": timedelta(hours=24)}
#: OpenAI's metadata bounds: keys, key and value lengths
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
#: rows per multi-row insert
INSERT_CHUNK = 500
LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.PARKED.value)
CANCELLED_REASON = "batch cancelled"
EXPIRED_REASON = "batch expired"


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


OPEN = (BatchStatus.VALIDATING.value, BatchStatus.IN_PROGRESS.value, BatchStatus.CANCELLING.value)


def _ts(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


@dataclass(frozen=True)
class BatchRecord:
    """A batch's row (``metadata`` is the column's name; the ORM model calls it ``batch_metadata``)."""

    id: str
    tenant_id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    metadata: dict[str, str] | None
    total: int
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    finalizing_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    expired_at: datetime | None = None
    cancelling_at: datetime | None = None
    cancelled_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> BatchRecord:
        mapping = row._mapping
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})


def batch_object(row: BatchRecord, counts: Mapping[str, int]) -> dict[str, Any]:
    """A batch's row and its jobs' counts by status as OpenAI's ``Batch``."""
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _ts(row.created_at),
        "in_progress_at": _ts(row.in_progress_at),
        "expires_at": _ts(row.expires_at),
        "finalizing_at": _ts(row.finalizing_at),
        "completed_at": _ts(row.completed_at),
        "failed_at": _ts(row.failed_at),
        "expired_at": _ts(row.expired_at),
        "cancelling_at": _ts(row.cancelling_at),
        "cancelled_at": _ts(row.cancelled_at),
        "request_counts": {
            "total": int(row.total),
            "completed": counts.get(JobStatus.SUCCEEDED.value, 0),
            "failed": counts.get(JobStatus.FAILED.value, 0) + counts.get(JobStatus.EXPIRED.value, 0),
        },
        "metadata": row.metadata,
    }


def _metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS:
        raise ApiError(
            400, f"metadata: expected an object of at most {MAX_METADATA_KEYS} keys", param="metadata"
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise ApiError(
                400,
                f"metadata.{key[:MAX_METADATA_KEY]}: keys of at most {MAX_METADATA_KEY} characters, string "
                f"values of at most {MAX_METADATA_VALUE}",
                param="metadata",
            )
    return dict(metadata)


def create(
    settings: Settings,
    tenant_id: str,
    *,
    input_file_id: Any,
    endpoint: Any,
    completion_window: Any,
    metadata: Any = None,
) -> dict[str, Any]:
    """Record a batch and one job per line of its input file in one transaction, then queue the jobs."""
    if endpoint not in ENDPOINTS:
        raise ApiError(
            400, f"Invalid value for 'endpoint': expected one of {', '.join(ENDPOINTS)}.", param="endpoint"
        )
    if completion_window not in WINDOWS:
        raise ApiError(
            400, "Invalid value for 'completion_window': expected '24h'.", param="completion_window"
        )
    meta = _metadata(metadata)
    try:
        priority = validate_priority((meta or {}).get("priority", "low"))
    except ValueError:
        raise ApiError(
            400, f"metadata.priority: expected one of {', '.join(PRIORITY_QUEUES)}", param="metadata"
        ) from None
    if not isinstance(input_file_id, str):
        raise ApiError(400, "Missing required parameter: 'input_file_id'.", param="input_file_id")
    content = file_store.file_content(tenant_id, input_file_id)
    if content is None:
        raise ApiError(
            404, f"No such File object: {input_file_id}", param="input_file_id", code="file_not_found"
        )
    requests = parse_input(content, settings)
    now = utcnow()
    batch_id = f"batch_{uuid.uuid4().hex}"
    expires_at = now + WINDOWS[completion_window]
    queue = PRIORITY_QUEUES[priority]
    job_rows: list[dict[str, Any]] = []
    line_rows: list[dict[str, Any]] = []
    for request in requests:
        submission = validate_submission(settings, **request.fields, priority=priority)
        job_id = str(uuid.uuid4())
        job_rows.append(
            {
                "id": job_id,
                "status": JobStatus.QUEUED.value,
                "priority": priority,
                "queue": queue,
                "model": submission.model,
                "request": {**submission.payload, "tenant": tenant_id},
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
                "expires_at": expires_at,
                "tenant": tenant_id,
                "batch_id": batch_id,
            }
        )
        line_rows.append(
            {"job_id": job_id, "batch_id": batch_id, "line": request.line, "custom_id": request.custom_id}
        )
    record = BatchRecord(
        id=batch_id,
        tenant_id=tenant_id,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        status=BatchStatus.IN_PROGRESS.value,
        metadata=meta,
        total=len(requests),
        created_at=now,
        expires_at=expires_at,
        in_progress_at=now,
    )
    with transaction() as conn:
        conn.execute(insert(batches_t).values(**asdict(record)))
        for start in range(0, len(job_rows), INSERT_CHUNK):
            conn.execute(insert(jobs), job_rows[start : start + INSERT_CHUNK])
            conn.execute(insert(lines_t), line_rows[start : start + INSERT_CHUNK])
    # recorded: the job table is the outbox, so a job not sent now is sent by the sweeper
    publish_many([(r["id"], queue, r["request"]) for r in job_rows])
    return batch_object(record, {})


def _get(conn: Connection, batch_id: str, tenant_id: str | None) -> BatchRecord:
    query = select(batches_t).where(batches_t.c.id == batch_id)
    if tenant_id is not None:
        query = query.where(batches_t.c.tenant_id == tenant_id)
    row = conn.execute(query).first()
    if row is None:
        raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
    return BatchRecord.from_row(row)


def _counts(conn: Connection, batch_id: str) -> dict[str, int]:
    rows = conn.execute(
        select(jobs.c.status, func.count()).where(jobs.c.batch_id == batch_id).group_by(jobs.c.status)
    ).all()
    return {str(status): int(n) for status, n in rows}


def _expire_unstarted(conn: Connection, batch_id: str, reason: str, now: datetime) -> None:
    conn.execute(
        update(jobs)
        .where(
            jobs.c.batch_id == batch_id, jobs.c.status.in_((JobStatus.QUEUED.value, JobStatus.PARKED.value))
        )
        .values(status=JobStatus.EXPIRED.value, status_reason=reason, finished_at=now, updated_at=now)
    )


def retrieve(batch_id: str, tenant_id: str | None) -> dict[str, Any]:
    """The batch brought up to date (finished when none of its jobs is live)."""
    with transaction() as conn:
        row = _get(conn, batch_id, tenant_id)
        counts = _counts(conn, batch_id)
    if row.status not in OPEN:
        return batch_object(row, counts)
    now = utcnow()
    live = sum(counts.get(s, 0) for s in LIVE)
    if live and row.status == BatchStatus.IN_PROGRESS.value and now >= row.expires_at:
        with transaction() as conn:
            _expire_unstarted(conn, batch_id, EXPIRED_REASON, now)
            counts = _counts(conn, batch_id)
        live = sum(counts.get(s, 0) for s in LIVE)
    if live:
        return batch_object(row, counts)
    _finish(row, now)
    with transaction() as conn:
        return batch_object(_get(conn, batch_id, tenant_id), _counts(conn, batch_id))


class _Lost(Exception):
    """Another reader finished the batch first: this transaction's files are rolled back."""


def _finish(row: BatchRecord, now: datetime) -> None:
    with transaction() as conn:
        lines = conn.execute(
            select(
                lines_t.c.custom_id,
                jobs.c.id,
                jobs.c.status,
                jobs.c.result,
                jobs.c.error,
                jobs.c.status_reason,
                jobs.c.created_at,
            )
            .join(jobs, jobs.c.id == lines_t.c.job_id)
            .where(lines_t.c.batch_id == row.id)
            .order_by(lines_t.c.line)
        ).all()
    output: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for line in lines:
        (output if line.status == JobStatus.SUCCEEDED.value else errors).append(_output_line(line))
    # a batch whose every line ended before its window is completed, whenever this read comes
    expired = any(e["error"] and e["error"]["code"] == "batch_expired" for e in errors)
    if row.status == BatchStatus.CANCELLING.value:
        final = BatchStatus.CANCELLED
    else:
        final = BatchStatus.EXPIRED if expired else BatchStatus.COMPLETED
    try:
        with transaction() as conn:
            out_id = err_id = None
            if output:
                out_id = file_store.insert_file(
                    conn, row.tenant_id, f"{row.id}_output.jsonl", "batch_output", _jsonl(output)
                ).id
            if errors:
                err_id = file_store.insert_file(
                    conn, row.tenant_id, f"{row.id}_error.jsonl", "batch_output", _jsonl(errors)
                ).id
            done = conn.execute(
                update(batches_t)
                .where(batches_t.c.id == row.id, batches_t.c.status == row.status)
                .values(
                    status=final.value,
                    finalizing_at=now,
                    output_file_id=out_id,
                    error_file_id=err_id,
                    **{f"{final.value}_at": now},
                )
            )
            if done.rowcount != 1:
                raise _Lost
    except _Lost:
        return


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def _output_line(line: Any) -> dict[str, Any]:
    """One line of OpenAI's batch output (or error) file."""
    base = {"id": f"batch_req_{line.id.replace('-', '')}", "custom_id": line.custom_id}
    if line.status == JobStatus.SUCCEEDED.value:
        body = completions.chat_completion(line.id, line.result, int(line.created_at.timestamp()))
        return {**base, "response": {"status_code": 200, "request_id": line.id, "body": body}, "error": None}
    if line.status == JobStatus.FAILED.value:
        error = completions.failure(line.id, {"status": line.status, "error": line.error})
        return {
            **base,
            "response": {"status_code": error.status, "request_id": line.id, "body": error.body()},
            "error": None,
        }
    cancelled = line.status_reason == CANCELLED_REASON
    return {
        **base,
        "response": None,
        "error": {
            "code": "batch_cancelled" if cancelled else "batch_expired",
            "message": "The batch was cancelled before this request ran."
            if cancelled
            else "This request could not be executed before the completion window expired.",
        },
    }


def cancel(batch_id: str, tenant_id: str) -> dict[str, Any]:
    """Cancel a batch: its jobs not started end at once, running ones finish; then it is ``cancelled``."""
    now = utcnow()
    with transaction() as conn:
        row = _get(conn, batch_id, tenant_id)
        if row.status in (BatchStatus.VALIDATING.value, BatchStatus.IN_PROGRESS.value):
            conn.execute(
                update(batches_t)
                .where(batches_t.c.id == batch_id, batches_t.c.status == row.status)
                .values(status=BatchStatus.CANCELLING.value, cancelling_at=now)
            )
            _expire_unstarted(conn, batch_id, CANCELLED_REASON, now)
        elif row.status != BatchStatus.CANCELLING.value:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{row.status}'.",
                param="batch_id",
                code="invalid_state",
            )
    return retrieve(batch_id, tenant_id)


def list_batches(
    tenant_id: str | None, *, limit: int = 20, after: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """A tenant's batches (every tenant's with None), newest first, each brought up to date; and whether
    there are more."""
    query = select(batches_t.c.id).order_by(batches_t.c.created_at.desc(), batches_t.c.id.desc())
    if tenant_id is not None:
        query = query.where(batches_t.c.tenant_id == tenant_id)
    with transaction() as conn:
        if after:
            cursor = _get(conn, after, tenant_id)
            query = query.where(
                (batches_t.c.created_at < cursor.created_at)
                | ((batches_t.c.created_at == cursor.created_at) & (batches_t.c.id < cursor.id))
            )
        ids = list(conn.execute(query.limit(limit + 1)).scalars())
    return [retrieve(i, tenant_id) for i in ids[:limit]], len(ids) > limit


def tenant_of(batch_id: str) -> str:
    with transaction() as conn:
        return str(_get(conn, batch_id, None).tenant_id)


#: open batches one beat run brings up to date at most (the oldest first)
FINISH_PER_RUN = 200


def finish_due(limit: int = FINISH_PER_RUN) -> int:
    """Bring open batches up to date, so a batch whose lines are done gets its files (and one past its
    window its expired lines) even when nobody reads it; how many ended. Run by beat (api/tasks.py)."""
    with transaction() as conn:
        ids = list(
            conn.execute(
                select(batches_t.c.id)
                .where(batches_t.c.status.in_(OPEN))
                .order_by(batches_t.c.created_at)
                .limit(limit)
            ).scalars()
        )
    return sum(1 for batch_id in ids if retrieve(batch_id, None)["status"] not in OPEN)
