"""Queue metrics: depth of every queue (parked jobs too), processing rate, waits, success and failure rates.

Depths are read from the broker and from the parking sorted sets in Redis; rates and waits from the job
table, so they are fleet-wide and survive worker restarts. Both raise ``DependencyUnavailableError`` when
their store cannot be reached.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict

import redis
from sqlalchemy import ColumnElement, func, select

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import get_engine, transaction
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.records import jobs
from ultra_tasks.redis_client import REDIS_DOWN

#: every Celery queue, in the order the workers consume them
ALL_QUEUES = (*keys.LLM_QUEUES, keys.QUEUE_OPS)
#: kombu's Redis transport defaults, used when the Celery config does not set them
DEFAULT_PRIORITY_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)


def _priority_layout() -> tuple[str, tuple[int, ...]]:
    from ultra_tasks.celery_app import app

    options = app.conf.broker_transport_options or {}
    return str(options.get("sep", DEFAULT_PRIORITY_SEP)), tuple(
        options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
    )


def broker_keys(queue: str) -> list[str]:
    """The Redis lists that hold a Celery queue: the bare name (step 0) and one per other priority step."""
    sep, steps = _priority_layout()
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]


def redis_location(client: redis.Redis) -> str:
    """host:port/db of a client, for messages (never its password)."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _down(client: redis.Redis, exc: BaseException) -> DependencyUnavailableError:
    return DependencyUnavailableError("redis", f"{redis_location(client)}: {exc}")


def queue_depths(client: redis.Redis | None) -> dict[str, int]:
    """Messages waiting in each Celery queue (``llm.high``, ``llm.default``, ``llm.low``, ``ops``) on a
    Redis broker: the sum of LLEN over the queue's priority sub-lists. Messages a worker holds unacked are
    not waiting and are not counted."""
    from ultra_tasks.broker import amqp_depths, is_amqp

    if is_amqp():
        # RabbitMQ: the three LLM levels share one native-priority queue, "llm" (broker.py)
        try:
            return amqp_depths()
        except Exception as exc:
            raise DependencyUnavailableError("broker", str(exc)) from exc
    if client is None:
        raise DependencyUnavailableError("broker", "no Redis broker client given")
    layout = {queue: broker_keys(queue) for queue in ALL_QUEUES}
    try:
        pipe = client.pipeline(transaction=False)
        for names in layout.values():
            for name in names:
                pipe.llen(name)
        counts = [int(n) for n in pipe.execute()]
    except REDIS_DOWN as exc:
        raise _down(client, exc) from exc
    out: dict[str, int] = {}
    for queue, names in layout.items():
        out[queue], counts = sum(counts[: len(names)]), counts[len(names) :]
    return out


def parked_depths(client: redis.Redis) -> dict[str, int]:
    """Jobs parked off each LLM queue (waiting in Redis, holding no worker slot)."""
    try:
        pipe = client.pipeline(transaction=False)
        for queue in keys.LLM_QUEUES:
            pipe.zcard(keys.parked(queue))
        return {queue: int(n) for queue, n in zip(keys.LLM_QUEUES, pipe.execute(), strict=True)}
    except REDIS_DOWN as exc:
        raise _down(client, exc) from exc


class QueueStats(TypedDict):
    """What ``queue_stats`` returns (the JSON of `ultra status` and the status page)."""

    window_s: float
    processed: int
    succeeded: int
    failed: int
    expired: int
    started: int
    processing_rate_per_s: float
    success_rate: float | None
    failure_rate: float | None
    avg_wait_s: float | None
    max_wait_s: float | None


def _wait_seconds(dialect: str) -> ColumnElement[Any] | None:
    """started_at - created_at in seconds, in SQL; None for a backend without a known expression."""
    if dialect == "postgresql":
        return func.extract("epoch", jobs.c.started_at - jobs.c.created_at)
    if dialect == "sqlite":
        # SQLite keeps these as text; julianday() reads them to the millisecond.
        return (func.julianday(jobs.c.started_at) - func.julianday(jobs.c.created_at)) * 86400.0
    return None


def queue_stats(window_s: float = 300.0, *, now: datetime | None = None) -> QueueStats:
    """What the fleet did in the last ``window_s`` seconds, from the job table.

    ``processed``: jobs that ended (finished_at in the window): ``succeeded`` + ``failed``, where failed
    includes ``expired`` (also given on its own), so the two rates add up to 1. ``processing_rate_per_s``
    is processed / window. Waits (started_at - created_at, started_at being the first start) are over the
    ``started`` jobs, those first started in the window. A rate or wait with nothing to measure is None.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    now = now or utcnow()
    start = now - timedelta(seconds=window_s)
    engine = get_engine()
    wait = _wait_seconds(engine.dialect.name)
    ended = (jobs.c.finished_at > start) & (jobs.c.finished_at <= now)
    began = (jobs.c.started_at > start) & (jobs.c.started_at <= now)
    with transaction(engine) as conn:
        by_status = {
            str(status): int(n)
            for status, n in conn.execute(
                select(jobs.c.status, func.count()).where(ended).group_by(jobs.c.status)
            ).all()
        }
        if wait is not None:
            row = conn.execute(select(func.count(), func.avg(wait), func.max(wait)).where(began)).one()
            started, avg_wait, max_wait = int(row[0]), row[1], row[2]
        else:
            waits = [
                (r.started_at - r.created_at).total_seconds()
                for r in conn.execute(select(jobs.c.created_at, jobs.c.started_at).where(began))
            ]
            started = len(waits)
            avg_wait = sum(waits) / started if started else None
            max_wait = max(waits) if waits else None
    succeeded = by_status.get(JobStatus.SUCCEEDED.value, 0)
    expired = by_status.get(JobStatus.EXPIRED.value, 0)
    failed = by_status.get(JobStatus.FAILED.value, 0) + expired
    processed = succeeded + failed
    return {
        "window_s": float(window_s),
        "processed": processed,
        "succeeded": succeeded,
        "failed": failed,
        "expired": expired,
        "started": started,
        "processing_rate_per_s": processed / window_s,
        "success_rate": succeeded / processed if processed else None,
        "failure_rate": failed / processed if processed else None,
        "avg_wait_s": float(avg_wait) if avg_wait is not None else None,
        "max_wait_s": float(max_wait) if max_wait is not None else None,
    }
