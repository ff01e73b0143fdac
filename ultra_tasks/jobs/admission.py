"""Admission: the exact QUEUE_MAX_SIZE bound, shed by priority (QUEUE_SHED_AT).

What is bounded is the work the system holds: jobs admitted and not yet final (queued, running or parked).
A parked job keeps its slot: it is accepted work waiting in Redis, and a fleet that parks everything (an
EMERGENCY mode, every provider down) must not take unbounded work because of it. A job's slot comes back
when its row reaches a final state (succeeded, failed, expired: ``records._ended``), and a job retried
from the dead letter is admitted again.

With Redis up, the slots are the job ids in three sorted sets (``keys.admitted(priority)``), and admission
is one Lua script: below this priority's threshold it adds the id and says so, else it returns the count
and the threshold. Check and take are one Redis step, so concurrent producers cannot both take the last
slot; an id already present is already admitted (a submit retried with its ``job_id``). Removal is ZREM,
idempotent, so a final write applied twice cannot free two slots.

With Redis down, the job table is the bound: the insert's transaction counts the live rows and inserts
only below the threshold, serialized fleet-wide (PostgreSQL: an advisory transaction lock; SQLite: the
writer lock, BEGIN IMMEDIATE), so it is exact too. The bound is exact while every producer reaches the
same store; a producer cut off from a Redis the others still reach counts the table only.

The sets are a cache of the table, kept right by ``reconcile`` (on the beat sweeper, and by the first
producer that finds them unsynced): live rows missing from the sets are added (a Redis flush or restart,
a producer that admitted through SQL while Redis was down), ids whose row is final or absent are removed
once ADMISSION_GRACE_S old (a worker killed between its final write and the ZREM, a submit that took a
slot and died before recording). ``keys.admission_synced()`` says the sets were rebuilt since Redis last
lost them; without it nothing is admitted from the sets until they are rebuilt.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from sqlalchemy import Connection, func, or_, select, text

from ultra_tasks import keys
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import QueueFullError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.keys import PRIORITY_QUEUES
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the priorities, in the order of the admission script's keys
PRIORITIES = tuple(PRIORITY_QUEUES)
#: statuses that hold a slot
LIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.PARKED.value)
#: a slot whose job's row is final or absent is freed by ``reconcile`` once it is this old (seconds): a
#: submit between taking its slot and recording its row is not mistaken for one that died
ADMISSION_GRACE_S = 60.0
#: the PostgreSQL advisory lock that serializes admissions through the job table (any constant bigint)
_SQL_LOCK_KEY = 0x756C7472612D01

# KEYS: admitted(high), admitted(default), admitted(low), admission_synced.
# ARGV: job id, index (1-3) of its priority's set, threshold.
# Returns {1, count}: admitted now; {2, 0}: already admitted; {0, count}: refused (count held);
# {-1, 0}: the sets are not synced with the job table (rebuild, then ask again).
_ADMIT_LUA = r"""
if redis.call('EXISTS', KEYS[4]) == 0 then return {-1, 0} end
local n = 0
for i = 1, 3 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then return {2, 0} end
  n = n + redis.call('ZCARD', KEYS[i])
end
if n >= tonumber(ARGV[3]) then return {0, n} end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[tonumber(ARGV[2])], 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  ARGV[1])
return {1, n + 1}
"""

# KEYS: the three admitted sets. ARGV: cutoff (ms), ids. Removes each id admitted before the cutoff (one
# admitted again since, e.g. retried from the dead letter, keeps its slot); returns how many went.
_EXPIRE_LUA = r"""
local removed = 0
local cutoff = tonumber(ARGV[1])
for j = 2, #ARGV do
  for i = 1, #KEYS do
    local score = redis.call('ZSCORE', KEYS[i], ARGV[j])
    if score and tonumber(score) < cutoff then
      removed = removed + redis.call('ZREM', KEYS[i], ARGV[j])
    end
  end
end
return removed
"""


# KEYS: the three admitted sets, the jobs-finished channel. ARGV: job id. Frees the job's slot wherever it
# is and tells whoever waits for the job (the HTTP API) that it is final; how many went (0 or 1).
_RELEASE_LUA = r"""
local removed = 0
for i = 1, 3 do removed = removed + redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('PUBLISH', KEYS[4], ARGV[1])
return removed
"""


@dataclass(frozen=True)
class Threshold:
    """Jobs of ``priority`` are refused once ``limit`` jobs are held: ``share`` of ``max_size``
    (rounded down, at least one, so an empty system admits every priority)."""

    priority: str
    share: float
    limit: int
    max_size: int

    def refusal(self, held: int, setting: str = "QUEUE_MAX_SIZE") -> QueueFullError:
        return QueueFullError(
            held,
            self.max_size,
            priority=self.priority,
            threshold=self.limit,
            share=self.share,
            setting=setting,
        )


def threshold(priority: str, max_size: int, settings: Settings | None = None) -> Threshold:
    """The threshold of ``priority`` under a bound of ``max_size`` jobs (QUEUE_SHED_AT's share of it)."""
    share = (settings or get_settings()).queue_shed_at.share(priority)
    # the epsilon keeps 0.7 * 50 at 35 whatever the float rounding
    return Threshold(priority, share, max(1, math.floor(share * max_size + 1e-9)), max_size)


def thresholds(settings: Settings | None = None) -> dict[str, Threshold]:
    settings = settings or get_settings()
    return {p: threshold(p, settings.queue_max_size, settings) for p in PRIORITIES}


@dataclass(frozen=True)
class Slot:
    """One job's admission. ``fresh``: this admission took the slot (give it back if recording fails);
    False when the id already held one. ``via_sql``: Redis was down, the insert's transaction is the
    admission (``guard`` must run in it)."""

    job_id: str
    threshold: Threshold
    fresh: bool
    via_sql: bool = False

    def guard(self, *, idempotency_key: str | None = None) -> Callable[[Connection], None] | None:
        """What the recording transaction must run first: the SQL bound when Redis was down, else None."""
        if not self.via_sql:
            return None
        return sql_guard(self.threshold, job_id=self.job_id, idempotency_key=idempotency_key)


# --- Redis --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Scripts:
    admit: Script
    expire: Script
    release: Script


@lru_cache(maxsize=16)
def _scripts(client: redis.Redis) -> _Scripts:
    return _Scripts(
        client.register_script(_ADMIT_LUA),
        client.register_script(_EXPIRE_LUA),
        client.register_script(_RELEASE_LUA),
    )


def _client(settings: Settings) -> redis.Redis:
    return shared_redis(settings.redis_url)


def _set_keys() -> list[str]:
    return [keys.admitted(p) for p in PRIORITIES]


#: set when this process admitted a job through the job table (Redis was down): the sets lack it, so the
#: next time Redis answers they are marked unsynced and rebuilt before anything is admitted from them
_sql_admitted = threading.Event()


def reserve(
    job_id: str, priority: str, *, settings: Settings | None = None, client: redis.Redis | None = None
) -> Slot:
    """Take a slot for ``job_id`` before anything is recorded, or raise ``QueueFullError`` naming the
    threshold that applied. With Redis down the slot is the SQL insert's to take (``Slot.via_sql``)."""
    settings = settings or get_settings()
    limit = threshold(priority, settings.queue_max_size, settings)
    client = client or _client(settings)
    try:
        if _sql_admitted.is_set():
            client.delete(keys.admission_synced())
            _sql_admitted.clear()
        for _ in range(2):
            status, held = _scripts(client).admit(
                keys=[*_set_keys(), keys.admission_synced()],
                args=[job_id, PRIORITIES.index(priority) + 1, limit.limit],
            )
            if status == -1:
                reconcile(client)
                continue
            if status == 0:
                raise limit.refusal(int(held))
            return Slot(job_id, limit, fresh=status == 1)
    except REDIS_DOWN as exc:
        log.warning("job %s: Redis unreachable (%s); admitted through the job table", job_id, exc)
        return Slot(job_id, limit, fresh=True, via_sql=True)
    log.warning("job %s: the admission sets could not be synced; admitted through the job table", job_id)
    return Slot(job_id, limit, fresh=True, via_sql=True)


def give_back(slot: Slot) -> None:
    """Return a slot whose job was not recorded (nothing else holds it). A slot that cannot be returned
    now (Redis down) is freed by ``reconcile`` after the grace period."""
    if not slot.fresh or slot.via_sql:
        return
    try:
        _client(get_settings()).zrem(keys.admitted(slot.threshold.priority), slot.job_id)
    except REDIS_DOWN as exc:
        log.warning("job %s: its slot is freed by the next reconcile (%s)", slot.job_id, exc)


def release(job_id: str) -> None:
    """The job reached a final state: its slot comes back. Idempotent; with Redis down the next
    ``reconcile`` frees it."""
    try:
        # one command for the three sets (the job's priority is not known here) and the news that the job
        # is final: a run's last round trip costs the worker's CPU on every job
        client = _client(get_settings())
        _scripts(client).release(keys=[*_set_keys(), keys.jobs_finished()], args=[job_id], client=client)
    except REDIS_DOWN as exc:
        log.info("job %s: its slot is freed by the next reconcile (%s)", job_id, exc)


def readmit(
    job_id: str, priority: str, reset: Callable[[Callable[[Connection], None] | None], T | None]
) -> T | None:
    """A job retried from the dead letter is admitted again: ``reset(guard)`` makes it live (None: it
    was not final, so no slot is taken)."""
    slot = reserve(job_id, priority)
    try:
        out = reset(slot.guard())
    except BaseException:
        give_back(slot)
        raise
    if out is None:
        give_back(slot)
    return out


# --- the job table ------------------------------------------------------------------------------------
def _serialize(conn: Connection) -> None:
    """Make this transaction the only one admitting through the job table until it ends."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SQL_LOCK_KEY})
    elif dialect == "sqlite":
        # the writer lock from the start: a deferred transaction would read the count before it locks
        raw: Any = conn.connection.dbapi_connection
        if raw is not None and not raw.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # a database without either cannot make the count and the insert one step
        log.warning("admission through the job table is not serialized on %s", dialect)


#: the rows that hold a slot: live, and not a line of an API batch (a batch is bounded by its own limits,
#: API_BATCH_MAX_LINES, and its lines wait in llm.low without shutting interactive work out)
def _holds_slot() -> Any:
    return records.jobs.c.status.in_(LIVE) & records.jobs.c.batch_id.is_(None)


def _live_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).where(_holds_slot())).scalar_one())


def sql_guard(
    limit: Threshold, *, job_id: str | None = None, idempotency_key: str | None = None
) -> Callable[[Connection], None]:
    """The admission check run first in a recording transaction while Redis is down: counts the live rows
    and raises ``QueueFullError`` at the threshold. A job id or idempotency key already recorded passes
    (the insert then finds it and records nothing)."""

    def guard(conn: Connection) -> None:
        _serialize(conn)
        jobs = records.jobs
        repeat = [jobs.c.id == job_id] if job_id else []
        if idempotency_key:
            repeat.append(jobs.c.idempotency_key == idempotency_key)
        if repeat and conn.execute(select(jobs.c.id).where(or_(*repeat)).limit(1)).first() is not None:
            return
        held = _live_count(conn)
        if held >= limit.limit:
            raise limit.refusal(held)
        _sql_admitted.set()

    return guard


# --- reconcile ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconciled:
    """What ``reconcile`` changed: ids added (live rows the sets lacked) and removed (final or absent)."""

    added: list[str] = field(default_factory=list)
    removed: int = 0


def _ms(at: datetime) -> int:
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def reconcile(client: redis.Redis | None = None, *, grace_s: float | None = None) -> Reconciled:
    """Make the admitted sets the live rows of the job table, and mark them synced.

    Runs under the job table's admission lock, so no admission through SQL falls between the read and
    the sets. Raises what the stores raise when one is unreachable (``DependencyUnavailableError``, a
    Redis connection error): the sets stay as they are until the next run.
    """
    client = client or _client(get_settings())
    grace_s = ADMISSION_GRACE_S if grace_s is None else grace_s
    jobs = records.jobs
    with transaction() as conn:
        _serialize(conn)
        live = {
            str(r.id): (str(r.priority) if r.priority in PRIORITIES else "default", _ms(r.created_at))
            for r in conn.execute(select(jobs.c.id, jobs.c.priority, jobs.c.created_at).where(_holds_slot()))
        }
        pipe = client.pipeline(transaction=False)
        for key in _set_keys():
            pipe.zrange(key, 0, -1)
        members = {str(m) for ids in pipe.execute() for m in ids}
        seconds, micros = client.time()
        cutoff = int(seconds) * 1000 + int(micros) // 1000 - int(grace_s * 1000)
        added = [job_id for job_id in live if job_id not in members]
        if added:
            pipe = client.pipeline(transaction=False)
            for job_id in added:
                priority, created = live[job_id]
                # scored by when the job was recorded: one that ends before this lands is freed next time
                pipe.zadd(keys.admitted(priority), {job_id: created}, nx=True)
            pipe.execute()
        gone = sorted(members - set(live))
        removed = int(_scripts(client).expire(keys=_set_keys(), args=[cutoff, *gone])) if gone else 0
        client.set(keys.admission_synced(), "1")
    if added or removed:
        log.warning(
            "admission: %d live job(s) added to the admitted sets, %d slot(s) freed", len(added), removed
        )
    return Reconciled(added, removed)


# --- what metrics and status show ---------------------------------------------------------------------
@dataclass(frozen=True)
class Fill:
    """How full the bound is: jobs held per priority against each priority's threshold."""

    held: dict[str, int]
    max_size: int
    thresholds: dict[str, Threshold]

    @property
    def total(self) -> int:
        return sum(self.held.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "held": self.total,
            "max_size": self.max_size,
            "fill": self.total / self.max_size,
            "by_priority": dict(self.held),
            "thresholds": {
                p: {"share": t.share, "limit": t.limit, "room": max(0, t.limit - self.total)}
                for p, t in self.thresholds.items()
            },
        }


def fill(client: redis.Redis | None = None, settings: Settings | None = None) -> Fill:
    """The admitted sets' sizes against the thresholds (raises the Redis error when it is unreachable)."""
    settings = settings or get_settings()
    client = client or _client(settings)
    pipe = client.pipeline(transaction=False)
    for key in _set_keys():
        pipe.zcard(key)
    held = {p: int(n) for p, n in zip(PRIORITIES, pipe.execute(), strict=True)}
    return Fill(held, settings.queue_max_size, thresholds(settings))
