"""Why a job has no result yet, in words a user can act on: ``ultra submit`` prints these while it waits.

Each reason is read from the fleet's own records, each read on its own so one store that is down does not
hide what the others say:

- the job's row (database): running on which worker; parked, why and until about when (its cause from the
  parked envelope in Redis);
- the worker alive keys (Redis, jobs/liveness.py): no live worker consumes the job's queue, and which
  worker role would (workers/);
- the operation mode mirror (Redis): EMERGENCY holds back every queue but MODE_EMERGENCY_RUN_QUEUES;
  DEGRADED slows ``llm.low``;
- the broker: the queues are full (QUEUE_MAX_SIZE), or how many jobs wait ahead of this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from ultra_tasks import keys
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.liveness import live_consumers
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

#: what a reason is about (``WaitReason.kind``)
RUNNING, PARKED, NO_WORKER, MODE, QUEUE_FULL, BACKLOG, UNREADABLE = (
    "running",
    "parked",
    "no-worker",
    "mode",
    "queue-full",
    "backlog",
    "unreadable",
)


@dataclass(frozen=True)
class WaitReason:
    kind: str
    text: str
    #: what makes two readings the same reason (the text may carry a relative time that moves on)
    identity: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.identity or self.text


@dataclass(frozen=True)
class _Row:
    status: str
    queue: str
    worker: str | None
    attempts: int
    parked_until: datetime | None
    status_reason: str | None


def explain_wait(
    job_id: str,
    *,
    client: redis.Redis | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> list[WaitReason]:
    """Why ``job_id`` has no result yet (empty when nothing stands out: it is simply about to run)."""
    from ultra_tasks.jobs import records

    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    state = client or shared_redis()
    reasons: list[WaitReason] = []
    row: _Row | None = None
    try:
        r = records.get_job(job_id)
        until = r.parked_until
        row = _Row(
            r.status,
            r.queue,
            r.worker,
            int(r.attempts or 0),
            until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until,
            r.status_reason,
        )
    except DependencyUnavailableError as exc:
        reasons.append(WaitReason(UNREADABLE, f"the job's status cannot be read: {exc}", "database"))
    queue = row.queue if row is not None else None
    if row is not None and row.status == "running":
        on = f" on {row.worker}" if row.worker else ""
        reasons.append(WaitReason(RUNNING, f"it is running{on} (attempt {max(1, row.attempts)})"))
    if row is not None and row.status == "parked":
        reasons.append(_parked(state, job_id, row, now))
    try:
        if queue is not None and row is not None and row.status in ("queued", "parked"):
            reasons.extend(_workers(state, queue))
        if queue is not None:
            reasons.extend(_mode(state, queue, settings))
        if row is not None and row.status == "queued":
            reasons.extend(_queues(queue or keys.QUEUE_DEFAULT, settings))
    except REDIS_DOWN as exc:
        reasons.append(WaitReason(UNREADABLE, f"Redis cannot be read: {exc}", "redis"))
    return reasons


def _parked(state: redis.Redis, job_id: str, row: _Row, now: datetime) -> WaitReason:
    cause = None
    try:
        envelope = state.hget(keys.parked_jobs(), job_id)
        if envelope:
            cause = json.loads(envelope).get("cause")
    except (*REDIS_DOWN, ValueError):
        pass
    why = f" for {cause}" if cause else ""
    reason = f": {row.status_reason}" if row.status_reason else ""
    when = ""
    if row.parked_until is not None:
        seconds = max(0.0, (row.parked_until - now).total_seconds())
        when = f"; due back on {row.queue} at about {row.parked_until:%H:%M:%S} UTC (in {seconds:.0f} s)"
    identity = f"{cause}|{row.status_reason}|{row.parked_until}"
    return WaitReason(PARKED, f"it is parked{why}{reason}{when}", identity)


def _roles_for(queue: str) -> list[str]:
    try:
        from workers import roles
    except ImportError:  # an installed package without the repository's workers/ next to it
        return []
    return [name for name, role in roles().items() if queue in role.queues]


def _workers(state: redis.Redis, queue: str) -> list[WaitReason]:
    consumers = live_consumers(state)
    if any(queues is None or queue in queues for queues in consumers.values()):
        return []
    roles = _roles_for(queue)
    start = f" (start one: `ultra worker {roles[0]}`)" if roles else ""
    role = f"{' or '.join(roles)} " if roles else ""
    others = f"; {len(consumers)} live worker(s) consume other queues" if consumers else ""
    return [WaitReason(NO_WORKER, f"no live {role}worker consumes {queue}{start}{others}", queue)]


def _mode(state: redis.Redis, queue: str, settings: Settings) -> list[WaitReason]:
    raw = state.hget(keys.mode_current(), "mode")
    mode = raw.decode() if isinstance(raw, bytes) else raw
    if mode == "EMERGENCY" and queue not in settings.mode_emergency_run_queues:
        runs = ", ".join(settings.mode_emergency_run_queues) or "no queue"
        return [
            WaitReason(
                MODE,
                f"the operation mode is EMERGENCY: only {runs} runs; jobs of {queue} are held back "
                "(parked) until the mode improves",
            )
        ]
    if mode == "DEGRADED" and queue == keys.QUEUE_LOW:
        return [
            WaitReason(
                MODE,
                f"the operation mode is DEGRADED: {queue} jobs start at most "
                f"{settings.mode_degraded_low_rate:g} per minute fleet-wide",
            )
        ]
    return []


def _queues(queue: str, settings: Settings) -> list[WaitReason]:
    from ultra_tasks.jobs.stats import queue_depths

    broker = settings.effective_broker_url
    client = shared_redis(broker) if broker.startswith(("redis://", "rediss://", "unix://")) else None
    try:
        depths = queue_depths(client)
    except DependencyUnavailableError:
        return []
    llm = {q: n for q, n in depths.items() if q in keys.LLM_QUEUES}
    total = sum(llm.values())
    if total >= settings.queue_max_size:
        return [
            WaitReason(
                QUEUE_FULL,
                f"the queues are full: {total} jobs wait, QUEUE_MAX_SIZE is {settings.queue_max_size}",
                "full",
            )
        ]
    if queue not in keys.LLM_QUEUES:
        return []
    llm[queue] = max(0, llm.get(queue, 0) - 1)  # its own message
    ahead = {q: n for q, n in llm.items() if keys.LLM_QUEUES.index(q) <= keys.LLM_QUEUES.index(queue) and n}
    if not ahead:
        return []
    listed = ", ".join(f"{q}: {n}" for q, n in ahead.items())
    return [WaitReason(BACKLOG, f"other jobs wait ahead of it ({listed})", "backlog")]
