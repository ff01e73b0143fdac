"""Beat-driven operational tasks (queue ``ops``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis
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
    redis_up = True
    try:
        if not client.set(keys.health_tick(tick), "1", nx=True, ex=max(1, int(interval * 3))):
            log.info("health check of interval %s already ran", tick)
            return None
        client.incr(keys.health_runs())
    except REDIS_DOWN as exc:
        # The state Redis is down (a broker of its own still delivered this task): the checks must run
        # for the mode to notice it, and notice it coming back. Without the interval's claim a second
        # beat may evaluate too, which only hastens the mode's hysteresis while the outage lasts.
        redis_up = False
        log.warning("health check of interval %s runs unclaimed: Redis is unreachable (%s)", tick, exc)
    if _mode is None:
        _mode = SystemOperationMode()
    summary = check_and_evaluate(_mode)
    if redis_up:
        # the status page's plots: queue depths, parked jobs, breaker and cache counters and the mode,
        # once per interval whoever watches the page
        from ultra_tasks.metrics.rollup import sample_fleet

        sample_fleet(client)
    log.info("health: mode %s, checks %s", summary["mode"], summary["checks"])
    return summary


#: a job recorded this long ago without being published is sent by the sweeper (seconds)
UNPUBLISHED_GRACE_S = 10.0
#: a running job whose lease lapsed this long ago has no live run (its worker died): it is republished
LEASE_GRACE_S = 5.0


#: a job published this long ago and never started may have lost its message (seconds)
LOST_MESSAGE_GRACE_S = 30.0


def _lost_messages(waiting: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The published, never-started jobs whose message is no longer waiting on a Redis broker.

    A Redis restart can lose a delivery: kombu's Redis transport takes a message off its list (BRPOP) and
    notes it as unacknowledged in a second command, and a channel that died keeps its unacknowledged
    messages until the visibility timeout (an hour) restores them. A waiting job is taken as lost when its
    queue is empty (a job behind a backlog is not judged until the backlog has drained) and it was
    published LOST_MESSAGE_GRACE_S ago: with prefetch 1 a worker holds no message it has not started.
    Republishing one that was not lost is harmless (the second delivery finds the job done or claimed).
    RabbitMQ has no such window.
    """
    from ultra_tasks.broker import is_amqp
    from ultra_tasks.jobs.stats import broker_keys

    if not waiting or is_amqp():
        return []
    client = shared_redis(get_settings().effective_broker_url)
    try:
        pipe = client.pipeline(transaction=False)
        queues = sorted({queue for _, queue, _ in waiting})
        for queue in queues:
            for name in broker_keys(queue):
                pipe.llen(name)
        lengths = pipe.execute()
    except REDIS_DOWN:
        return []
    steps = len(lengths) // len(queues)
    empty = {q for i, q in enumerate(queues) if not any(lengths[i * steps : (i + 1) * steps])}
    return [job for job in waiting if job[1] in empty]


def _reconcile_admission() -> None:
    """The admission bound's sets follow the job table: slots of jobs that ended unseen (a worker killed
    between its final write and giving the slot back) come back, live jobs the sets lost count again."""
    from ultra_tasks.errors import DependencyUnavailableError
    from ultra_tasks.jobs.admission import reconcile

    try:
        reconcile()
    except (DependencyUnavailableError, *REDIS_DOWN) as exc:
        log.warning("admission sets not reconciled (%s); the next sweep tries again", exc)


@app.task(name="ultra.ops.sweep", ignore_result=True)
def sweep() -> int:
    """Publish jobs the outbox holds (recorded while the broker was down) and jobs whose run's lease
    lapsed (their worker died), and move jobs waiting past QUEUE_STARVATION_AGE one queue up.
    Idempotent: a second delivery finds the job leased, or final with its outcome."""
    from ultra_tasks.jobs import records
    from ultra_tasks.jobs.record_buffer import RecordWriter
    from ultra_tasks.jobs.submit import publish

    settings = get_settings()
    client = breaker_redis()
    # writes buffered while the database was down go first: the sweeps below read the table
    RecordWriter(client).flush()
    _reconcile_admission()
    # Running jobs whose lease nobody renews (their worker died) go out again at once, rather than after
    # the broker's visibility timeout (an hour by default); the run that gets the message takes the lapsed
    # lease over and continues the job's attempt budget (jobs/lease.py).
    due = records.jobs_to_republish(UNPUBLISHED_GRACE_S, LEASE_GRACE_S)
    for lost in _lost_messages(records.published_waiting(LOST_MESSAGE_GRACE_S)):
        if all(lost[0] != d[0] for d in due):
            due.append(lost)
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


@app.task(name="ultra.ops.reap", ignore_result=True)
def reap() -> list[str]:
    """Send the running jobs of workers that stopped beating (WORKER_DEAD_AFTER) to other workers at
    once (jobs/reaper.py); the ids sent. Idempotent: a worker is forgotten once its jobs are sent, and a
    second delivery of a job finds its lease taken or its outcome written."""
    from ultra_tasks.jobs import reaper
    from ultra_tasks.jobs.submit import publish

    try:
        report = reaper.reap(breaker_redis(), get_settings(), publish)
    except redis.RedisError as exc:  # down, or refusing (OOM, READONLY, a command not allowed)
        log.warning("reaper: Redis could not serve it (%s); leases lapse on their own meanwhile", exc)
        return []
    if report.skipped:
        log.info("reaper: %s", report.skipped)
    return report.republished


@app.task(name="ultra.ops.retention", ignore_result=True)
def retention() -> int:
    """Delete finished jobs older than JOB_RETENTION (none when it is 0/none), in small batches
    (jobs/retention.py); returns how many. Idempotent: a second beat's run finds fewer or none."""
    from ultra_tasks.jobs.retention import purge_finished

    keep_s = get_settings().job_retention
    if keep_s is None:
        return 0
    report = purge_finished(keep_s)
    if report.capped:
        log.info("retention: %d jobs deleted, more are due; the next run goes on", report.deleted)
    return report.deleted
