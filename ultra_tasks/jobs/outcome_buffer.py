"""A job's outcome, readable from Redis only while its record write waits for the database.

The job's row is its result: the Celery result backend stores nothing per LLM job. While the database is
down a run's outcome write waits in the write buffer (record_buffer.py); for that time the outcome is also
kept under ``keys.job_outcome(job_id)`` (JSON, in the same transaction as the buffered write), so
``JobHandle.status()``/``result()`` and a redelivered run can read it. The key is deleted once the
buffered write lands and expires after JOB_OUTCOME_BUFFER_TTL minutes whatever happens, so a long outage
costs readability during the outage, never memory: the buffered write itself is kept until it lands.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.config import get_settings
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: record-buffer writes that end a job, and so carry an outcome worth reading
FINAL_OPS = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.EXPIRED.value)


def ttl_s() -> int:
    """Seconds an outcome stays readable at most (JOB_OUTCOME_BUFFER_TTL is in minutes)."""
    return get_settings().job_outcome_buffer_ttl * 60


def outcome_of(op: str, job_id: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome a buffered write ``op`` records, in the shape the runner returns; None for writes that
    do not end the job (started, parked, released)."""
    if op == JobStatus.SUCCEEDED.value:
        return dict(args["result"])
    if op == JobStatus.FAILED.value:
        return {"job_id": job_id, "status": op, "error": dict(args.get("error") or {})}
    if op == JobStatus.EXPIRED.value:
        return {"job_id": job_id, "status": op}
    return None


def keep(pipe: redis.client.Pipeline, job_id: str, outcome: dict[str, Any]) -> None:
    """Queue the outcome's write on ``pipe`` (the buffered write's own transaction)."""
    pipe.set(keys.job_outcome(job_id), json.dumps(outcome, separators=(",", ":")), ex=ttl_s())


def read(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The job's buffered final outcome, or None (none buffered, or Redis unreachable: logged)."""
    try:
        raw = client.get(keys.job_outcome(job_id))
    except REDIS_DOWN as exc:
        log.warning("job %s: buffered outcome unreadable (Redis: %s)", job_id, exc)
        return None
    if raw is None:
        return None
    try:
        outcome = json.loads(raw)
    except ValueError:
        log.warning("job %s: buffered outcome is not JSON; ignored", job_id)
        return None
    if isinstance(outcome, dict) and outcome.get("status") in FINAL_OPS:
        return outcome
    return None


def forget(client: redis.Redis | redis.client.Pipeline, job_id: str) -> None:
    """Delete the job's buffered outcome (its record landed, or the job starts over)."""
    client.delete(keys.job_outcome(job_id))
