"""Batch submit: a JSON-lines file of jobs, every line validated before any job is submitted.

Each line is one JSON object with the fields of ``submit`` (``prompt`` or ``messages``, ``model``,
``priority``, ``max_tokens``, ``temperature``, ``params``, ``metadata``, ``idempotency_key``, ...). A bad
line is reported with its number and the field at fault; with any bad line nothing is submitted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ultra_tasks.config import Settings
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import JobValidationError, QueueFullError
from ultra_tasks.jobs.records import jobs
from ultra_tasks.jobs.submit import JobHandle, submit
from ultra_tasks.jobs.validation import SUBMISSION_FIELDS, validate_submission

#: seconds between tries while the queues are full (backpressure) during a batch
QUEUE_FULL_POLL_S = 0.5
#: ids per status query while waiting for a batch
STATUS_CHUNK = 500


@dataclass(frozen=True)
class LineError:
    """What is wrong with one line of a batch."""

    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        return (
            f"line {self.line}: {self.field}: {self.message}"
            if self.field
            else f"line {self.line}: {self.message}"
        )


@dataclass(frozen=True)
class BatchEntry:
    line: int
    fields: dict[str, Any]


def parse_batch(
    lines: Iterable[str], settings: Settings, defaults: Mapping[str, Any] | None = None
) -> tuple[list[BatchEntry], list[LineError]]:
    """Every job of the batch (``defaults`` filling fields a line leaves out) and every bad line.

    Blank lines are skipped. Nothing is recorded or enqueued.
    """
    entries: list[BatchEntry] = []
    errors: list[LineError] = []
    job_ids: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            errors.append(LineError(number, None, f"not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            errors.append(LineError(number, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        unknown = sorted(set(obj) - set(SUBMISSION_FIELDS))
        if unknown:
            errors.append(
                LineError(
                    number,
                    unknown[0],
                    f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                    f"(expected some of {', '.join(SUBMISSION_FIELDS)})",
                )
            )
            continue
        fields = {**(defaults or {}), **obj}
        try:
            checked = validate_submission(settings, **fields)
        except JobValidationError as exc:
            errors.append(LineError(number, exc.field, exc.message))
            continue
        if checked.job_id is not None:
            if checked.job_id in job_ids:
                errors.append(LineError(number, "job_id", f"same as line {job_ids[checked.job_id]}"))
                continue
            job_ids[checked.job_id] = number
        entries.append(BatchEntry(number, fields))
    return entries, errors


def submit_entry(
    entry: BatchEntry, *, full_wait_s: float, sleep: Callable[[float], None] = time.sleep
) -> JobHandle:
    """Submit one validated line; while the queues are full, wait for room up to ``full_wait_s`` seconds
    (then ``QueueFullError``): a batch respects backpressure instead of failing half way at once."""
    deadline = time.monotonic() + full_wait_s
    while True:
        try:
            return submit(**entry.fields)
        except QueueFullError:
            if time.monotonic() >= deadline:
                raise
            sleep(QUEUE_FULL_POLL_S)


def job_statuses(job_ids: Sequence[str]) -> dict[str, str]:
    """The status of each job that is recorded, in a few queries however long the batch."""
    out: dict[str, str] = {}
    for start in range(0, len(job_ids), STATUS_CHUNK):
        chunk = list(job_ids[start : start + STATUS_CHUNK])
        with transaction() as conn:
            out.update(
                {
                    str(i): str(s)
                    for i, s in conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(chunk)))
                }
            )
    return out
