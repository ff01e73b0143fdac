"""Beat-driven operational tasks (queue ``ops``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ultra_tasks import keys
from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.resilience.breaker import breaker_redis

log = logging.getLogger(__name__)

_mode: Any = None


@app.task(name="ultra.ops.health_check", ignore_result=True)
def health_check() -> dict[str, Any] | None:
    """Run the health checks and evaluate the operation mode, once per interval however many beats run.

    The first run of an interval claims it in Redis; another beat's run in the same interval does nothing,
    so the task is idempotent and a duplicate scheduler is harmless.
    """
    global _mode
    from ultra_tasks.health.runner import check_and_evaluate
    from ultra_tasks.mode.operation_mode import SystemOperationMode

    interval = get_settings().health_check_interval
    client = breaker_redis()
    tick = int(time.time() // interval)
    if not client.set(keys.health_tick(tick), "1", nx=True, ex=max(1, int(interval * 3))):
        log.info("health check of interval %s already ran", tick)
        return None
    client.incr(keys.health_runs())
    if _mode is None:
        _mode = SystemOperationMode()
    summary = check_and_evaluate(_mode)
    log.info("health: mode %s, checks %s", summary["mode"], summary["checks"])
    return summary


#: a job recorded this long ago without being published is sent by the sweeper (seconds)
UNPUBLISHED_GRACE_S = 10.0
#: beyond its time limit by this much, a "running" job's worker is taken as dead (seconds)
RUNNING_GRACE_S = 60.0


@app.task(name="ultra.ops.sweep", ignore_result=True)
def sweep() -> int:
    """Publish jobs the outbox holds (recorded while the broker was down) and jobs whose worker died
    mid-run, and move jobs waiting past QUEUE_STARVATION_AGE one queue up. Idempotent: a job that runs
    twice returns its recorded outcome the second time."""
    from ultra_tasks.jobs import records
    from ultra_tasks.jobs.liveness import ALIVE_TTL_S, is_dead
    from ultra_tasks.jobs.record_buffer import RecordWriter
    from ultra_tasks.jobs.submit import publish

    settings = get_settings()
    client = breaker_redis()
    # writes buffered while the database was down go first: the sweeps below read the table
    RecordWriter(client).flush()
    due = records.jobs_to_republish(UNPUBLISHED_GRACE_S, settings.job_time_limit + RUNNING_GRACE_S)
    # Jobs held by a worker process that died (its liveness key expired): at once, rather than after the
    # broker's visibility timeout (an hour by default) or the stale-claim grace. The run that gets the
    # message takes the claim over (runner.py).
    verdicts: dict[str, bool] = {}
    for job_id, queue, payload, holder in records.running_jobs(ALIVE_TTL_S):
        if holder not in verdicts:
            verdicts[holder] = bool(holder) and is_dead(client, holder)
        if verdicts[holder] and all(job_id != d[0] for d in due):
            due.append((job_id, queue, payload))
    sent = sum(publish(job_id, queue, payload) for job_id, queue, payload in due)
    if due:
        log.warning("sweeper republished %d of %d jobs", sent, len(due))
    if settings.queue_starvation_age > 0:
        # the starvation guard: strict priority must not leave old low jobs waiting forever
        starved = records.promote_starved(settings.queue_starvation_age)
        moved = sum(publish(job_id, queue, payload) for job_id, queue, payload in starved)
        if starved:
            log.info("sweeper moved %d waiting jobs one queue up", moved)
        sent += moved
    return sent
