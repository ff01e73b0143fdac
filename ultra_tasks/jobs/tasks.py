"""Celery tasks of the job path."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from ultra_tasks import keys
from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.liveness import identity
from ultra_tasks.jobs.outcomes import Duplicate, Lost, Parked
from ultra_tasks.jobs.parking import Parking, park_delay
from ultra_tasks.jobs.runner import execute_job
from ultra_tasks.mode.effects import SLOT_FLAG
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis
from ultra_tasks.signing import verify

log = logging.getLogger(__name__)

#: how long a job whose database is unreachable waits before its next try (seconds, doubled each time)
DB_RETRY_BASE_S = 2.0
DB_RETRY_MAX_S = 60.0
DB_MAX_RETRIES = 30
#: when Redis cannot take a parked job, it waits as a Celery retry instead, never longer than this
#: (seconds): well below the visibility timeout, so the broker never redelivers it in a loop
PARK_FALLBACK_MAX_S = 60.0


# ignore_result: the job's row is its result. A copy in the result backend (celery-task-meta-<id>, kept
# for days) would make Redis grow with every job ever run; while the database is down the outcome is
# kept in Redis only until its record write lands (jobs/outcome_buffer.py). Retries and failures are not
# stored either (store_errors_even_if_ignored stays off).
# resultrepr_maxsize: Celery builds a repr of every result (up to 1 KiB by default) for its success log
# line and the task-succeeded event that Flower shows. A job's result is the model's answer: it belongs
# in the job table, not in the event stream or logs (celery_app.py drops it from the log line), and
# walking it costs each job worker CPU (docs/benchmarks.md).
@app.task(name="ultra.run_job", bind=True, max_retries=None, ignore_result=True, resultrepr_maxsize=1)
def run_job(self: Task, job_id: str, payload: dict[str, Any], sig: str | None = None) -> dict[str, Any]:
    """Run one LLM job. ``payload`` is the validated request (JSON), never a callable; ``sig`` the
    producer's signature of both, checked before anything else (signing.py)."""
    if not verify("job", job_id, payload, sig):
        refuse_unsigned("job", job_id)
    queue = (self.request.delivery_info or {}).get("routing_key")
    try:
        outcome = execute_job(job_id, payload, queue=queue, worker=identity(self.request.hostname))
    except DependencyUnavailableError as exc:
        if self.request.retries >= DB_MAX_RETRIES:
            raise
        delay = min(DB_RETRY_MAX_S, DB_RETRY_BASE_S * 2 ** min(self.request.retries, 10))
        raise self.retry(exc=exc, countdown=delay) from exc
    if isinstance(outcome, Duplicate) and 0 < self.request.retries < DB_MAX_RETRIES:
        # A retry of a run that an outage interrupted, finding the job still leased: the interrupted run
        # could not give its lease back (Redis or the database was down). Dropped, the job would wait for
        # the sweeper; instead it looks again once that lease has lapsed.
        raise self.retry(countdown=outcome.retry_after + 1.0)
    if isinstance(outcome, Duplicate | Lost):
        raise Ignore()  # acknowledged, and no result stored over the real run's
    if isinstance(outcome, Parked):
        _park(self, job_id, payload, outcome)
    return outcome.to_dict()


def _park(task: Task, job_id: str, payload: dict[str, Any], outcome: Parked) -> None:
    """Park the job in Redis until it is due; this message is then done (acknowledged, no result stored:
    the run after release stores the real one). Not an error and not a failed attempt."""
    settings = get_settings()
    wait = park_delay(outcome.retry_after, at_most=settings.park_max_wait)
    if outcome.slot_reserved:
        wait = outcome.retry_after  # its own reserved start slot: no jitter
    payload = {k: v for k, v in payload.items() if k != SLOT_FLAG}
    if outcome.slot_reserved:
        payload[SLOT_FLAG] = True
    try:
        Parking(shared_redis()).park(
            job_id, outcome.queue, payload, time.time() + wait, outcome.reason, outcome.cause
        )
    except REDIS_DOWN as exc:
        log.warning("job %s cannot be parked (Redis: %s); it waits as a retry instead", job_id, exc)
        raise task.retry(countdown=min(PARK_FALLBACK_MAX_S, wait)) from exc
    raise Ignore()


def refuse_unsigned(kind: str, message_id: str) -> None:
    """Drop a message this worker cannot verify (acknowledged, nothing run, nothing stored), and count it."""
    from ultra_tasks.metrics.jobs import BUFFER, field

    log.warning(
        "refused %s message %s: its signature is missing or not made with ULTRA_SECRET_KEY (is the key the "
        "same on producers and workers?)",
        kind,
        message_id,
    )
    BUFFER.incr(keys.metrics_jobs(), field("refused", kind))
    raise Ignore()


@app.task(name="ultra.noop")
def noop(job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Does nothing: the baseline that scripts/bench_throughput.py compares the job path against."""
    return {"job_id": job_id}
