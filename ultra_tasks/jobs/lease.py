"""One fenced lease per run: the only thing that lets a run call a provider or write an outcome.

A run acquires a lease on its job before anything else: an owner (the worker process), a fencing token
that only grows, and an expiry. The lease lives in Redis (one hash per job, every step one Lua script on
Redis' clock) and is mirrored into the job's row in SQL (``lease_token``, ``lease_expires_at``):

- **Acquire** takes the lease in every store that answers: Redis first (a live lease there means another
  run holds the job, database up or not), then the row (a live lease there means the same, Redis up or
  not). A store that is down is skipped; both down, the run waits as a retry. Tokens come from Redis (its
  clock in microseconds, or one past the job's last token) or, with Redis down, from the database the same
  way, so a newer run always holds a greater token whichever store issued it.
- **Every provider call** is counted in the lease before it goes out, in one script that also checks the
  token (``begin_call``): a run whose lease lapsed or was taken stops with ``LeaseLostError`` and calls
  nothing, and a run that takes a dead run's job over continues its attempt budget.
- **Every outcome write** carries the token: the row takes it only if it has seen no newer run
  (``records._FENCE``), so a stale run, or its write replayed late from the buffer, changes nothing.
- **Renewal**: the worker's heartbeat renews every lease of its process every third of JOB_LEASE_TTL in
  both stores (and writes a lease into a store that came back), so no cutoff depends on how long a run may
  take. A lease nobody renews lapses; the sweeper then republishes its job.

What cannot be excluded: a run that held its lease only in Redis (database down) and one that held it
only in SQL (Redis down) at the same moment, which needs each process to see a different store fail.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings
from ultra_tasks.errors import DependencyUnavailableError, LeaseLostError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds a job's lease hash (its token and its provider calls) outlives its last write
LEASE_RECORD_TTL_S = 24 * 3600


def tombstone_s(settings: Settings) -> int:
    """Seconds a finished job's lease hash stays as a tombstone: its token keeps a stale run of the job
    (its lease taken over while its process was frozen or cut off) from writing the lease back and making
    a call. Such a run learns it lost at its next renewal, a third of JOB_LEASE_TTL after it wakes; the
    tombstone covers a run as long as JOB_TIME_LIMIT, or five lease lifetimes. A run stale for longer
    still writes nothing (the row's token fences its outcome) but may make one call. Tied to the job's
    life, not to history: Redis holds a tombstone per job finished in that window only."""
    return int(max(settings.job_time_limit, 5 * settings.job_lease_ttl))


# Redis' clock, shared by every script: milliseconds and microseconds since the epoch.
_NOW = r"""
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS[1] lease hash; ARGV: owner, ttl ms, record ttl s, own takeover (1/0), precount (1/0).
# Returns {1, token, calls before this run, calls sent before this run, the token replaced} when taken,
# {0, owner, ms left} when another run holds it.
# ``precount`` counts the run's first provider call now, in the same step (most runs make exactly one:
# it saves a round trip per job); a run that makes none gives it back when it ends. ``prev`` keeps the
# token this one replaced, for a run that must abandon a lease it cannot use (RELEASE mode 2).
ACQUIRE_LUA = (
    _NOW
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'owner', 'token', 'exp', 'calls', 'sent')
local exp = tonumber(cur[3] or '0')
if cur[1] and exp > now_ms and not (cur[1] == ARGV[1] and ARGV[4] == '1') then
  return {0, cur[1], exp - now_ms}
end
local token = math.max(tonumber(cur[2] or '0') + 1, now_us)
local stoken = string.format('%.0f', token)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', stoken, 'exp', now_ms + tonumber(ARGV[2]),
           'prev', cur[2] or '0')
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[1], 'calls', 1)
  redis.call('HINCRBY', KEYS[1], 'sent', 1)
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, stoken, tonumber(cur[4] or '0'), tonumber(cur[5] or '0'), cur[2] or '0'}
"""
)

# KEYS[1] lease hash; ARGV: token, ttl ms, record ttl s, owner, calls known to the run, count (1/0).
# Extends the lease (and counts a call when asked) unless a newer run's token is there; writes the lease
# back if the hash is gone (Redis lost it) or holds an older token (a store that was down came back).
# Returns the job's calls so far, or -1 when a newer run holds the job. ``calls`` is what the job's
# attempt budget is charged; ``sent`` every call that went out (a failed probe is sent, not charged).
EXTEND_LUA = (
    _NOW
    + r"""
local cur = redis.call('HMGET', KEYS[1], 'token', 'calls')
if cur[1] and tonumber(cur[1]) > tonumber(ARGV[1]) then
  return -1
end
local calls = math.max(tonumber(cur[2] or '0'), tonumber(ARGV[5])) + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'token', ARGV[1], 'exp', now_ms + tonumber(ARGV[2]),
           'calls', calls)
if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[1], 'sent', 1) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return calls
"""
)

#: how a run gives its Redis lease back
END, FINAL, ABANDON = 0, 1, 2
# KEYS[1] lease hash; ARGV: token, mode, refund (1: a call counted at acquire never went out), tombstone
# seconds (0: keep the expiry).
# END: the lease ends now, the job's calls stay for its next run. FINAL: the job has its outcome; the
# hash stays as a tombstone (its token keeps a late, older run from writing itself back) for the
# tombstone's seconds. ABANDON: the run never used the lease (the job table says another run holds the
# job, or the job is final: then it expires as a tombstone too): the token it replaced goes back, so that
# run's renewals still match.
RELEASE_LUA = r"""
local cur = redis.call('HMGET', KEYS[1], 'token', 'prev')
if cur[1] ~= ARGV[1] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'calls', -1)
  redis.call('HINCRBY', KEYS[1], 'sent', -1)
end
if ARGV[2] == '2' then
  redis.call('HSET', KEYS[1], 'token', cur[2] or '0', 'exp', 0)
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
elseif ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'exp', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('HSET', KEYS[1], 'exp', 0)
end
return 1
"""
#: final releases wait to be sent together (one pipeline) until this many are pending or the oldest has
#: waited this long; meanwhile the job's lease still holds it, which is right: the job is done
RELEASE_BATCH = 32
RELEASE_BATCH_WAIT_S = 0.5


@dataclass
class Lease:
    """A run's hold on its job."""

    job_id: str
    owner: str
    token: int
    #: the job's provider calls so far, this run's included
    calls: int
    #: whether the job has a row (an unrecorded job's lease lives in Redis only)
    recorded: bool = True
    #: whether the lease was written into the row (False while the database was down)
    in_sql: bool = True
    lost: bool = False
    #: the first provider call was counted when the lease was taken (``calls`` includes it) and has not
    #: gone out yet
    precounted: bool = False
    #: when the lease was last taken or extended in Redis (monotonic seconds)
    extended_at: float = 0.0
    #: provider calls the job's earlier runs sent (Redis' count): those the ledger lacks died in flight
    sent_before: int = 0
    #: the token of the run this lease replaced (names the calls that run left unrecorded)
    previous_token: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def charged(self) -> int:
        """The job's provider calls that went out (a precounted call not yet made excluded)."""
        return self.calls - 1 if self.precounted else self.calls

    def check(self) -> None:
        if self.lost:
            raise LeaseLostError(self.job_id, self.token)


@dataclass(frozen=True)
class Acquired:
    lease: Lease
    #: the row's state when claimed; None if the job has no row (never recorded) or the database is down
    start: records.RunStart | None


@dataclass(frozen=True)
class Held:
    """Another run holds the job: this delivery is a duplicate."""

    holder: str
    #: seconds the holder's lease still runs (its next renewal extends it)
    remaining_s: float


@dataclass(frozen=True)
class Finished:
    """The job's outcome is already recorded."""

    start: records.RunStart


Acquisition = Acquired | Held | Finished


class Leases:
    """The leases of one worker process: acquire, count calls, renew (the heartbeat), release."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.settings = settings
        self.ttl_s = settings.job_lease_ttl
        self.tombstone_s = tombstone_s(settings)
        self._clock, self._now = clock, now
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._extend = client.register_script(EXTEND_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._held: dict[str, Lease] = {}
        #: jobs a thread of this process is taking the lease of right now
        self._taking: set[str] = set()
        self._lock = threading.Lock()
        #: when every held lease was last renewed in at least one store (monotonic seconds)
        self._renewed_at = clock()
        #: final releases not yet sent: (job id, token), and when the oldest was queued
        self._releases: list[tuple[str, int]] = []
        self._releases_since = 0.0

    # --- acquiring -----------------------------------------------------------------------------------
    def acquire(self, job_id: str, owner: str) -> Acquisition:
        """Take the job's lease for a run of ``owner`` (this process). ``DependencyUnavailableError`` if
        neither Redis nor the database answers."""
        with self._lock:
            # A duplicate delivery to this process while it runs (or is taking) the job: Held. Reserved
            # here, under the lock, so two threads cannot both take it (the second would take the lease
            # over from the first: fenced, but the first may already have made its precounted call).
            if job_id in self._held or job_id in self._taking:
                return Held(owner, self.ttl_s)
            self._taking.add(job_id)
        try:
            return self._acquire_for(job_id, owner)
        finally:
            with self._lock:
                self._taking.discard(job_id)

    def _acquire_for(self, job_id: str, owner: str) -> Acquisition:
        ttl_ms = int(self.ttl_s * 1000)
        redis_down: Exception | None = None
        token: int | None = None
        calls = sent = previous = 0
        try:
            reply = self._acquire(
                keys=[keys.job_lease(job_id)], args=[owner, ttl_ms, LEASE_RECORD_TTL_S, 1, 1]
            )
            if int(reply[0]) == 0:
                return Held(str(reply[1]), int(reply[2]) / 1000)
            token, calls = int(reply[1]), int(reply[2])
            if len(reply) > 4:
                sent, previous = int(reply[3]), int(reply[4])
        except REDIS_DOWN as exc:
            redis_down = exc
        taken_at = self._clock()
        try:
            start = records.claim(
                job_id,
                owner,
                token=token,
                lease_expires_at=self._now() + timedelta(seconds=self.ttl_s),
                own_takeover=True,
                stale_after_s=self.settings.job_time_limit + 60,
            )
        except DependencyUnavailableError as exc:
            if redis_down is not None or token is None:
                raise DependencyUnavailableError("redis and database", f"{redis_down}; {exc}") from exc
            log.warning("job %s leased in Redis only: the job table is unreachable (%s)", job_id, exc)
            lease = Lease(
                job_id, owner, token, calls + 1, in_sql=False, precounted=True, extended_at=taken_at
            )
            return Acquired(self._hold(lease), None)
        if start is None:
            if token is None:
                raise DependencyUnavailableError("redis", f"unrecorded job {job_id}: {redis_down}")
            lease = Lease(
                job_id, owner, token, calls + 1, recorded=False, precounted=True, extended_at=taken_at
            )
            return Acquired(self._hold(lease), None)
        if not start.claimed:
            final = JobStatus(start.status).is_final
            if token is not None:
                # a finished job's redelivery must not leave its hash for LEASE_RECORD_TTL_S
                self._give_back(job_id, token, ABANDON, refund=True, tombstone=final)
            if final:
                return Finished(start)
            return Held(start.holder or "unknown", start.held_for_s)
        assert start.token is not None
        if token is None:  # Redis down: the database issued the token, and calls are counted there
            lease = Lease(job_id, owner, start.token, start.attempts)
        else:
            lease = Lease(
                job_id,
                owner,
                start.token,
                max(calls, start.attempts) + 1,
                precounted=True,
                extended_at=taken_at,
                sent_before=sent,
                previous_token=previous,
            )
        return Acquired(self._hold(lease), start)

    def _hold(self, lease: Lease) -> Lease:
        with self._lock:
            if not self._held:  # nothing was due for renewal until now
                self._renewed_at = self._clock()
            self._held[lease.job_id] = lease
        return lease

    # --- calls ---------------------------------------------------------------------------------------
    def begin_call(self, lease: Lease) -> int:
        """Count one provider call about to go out, if the lease still holds; the job's calls so far.
        ``LeaseLostError`` if another run holds the job now."""
        lease.check()
        with lease._lock:
            count = 1
            if lease.precounted:
                lease.precounted = False
                if self._clock() - lease.extended_at < self.ttl_s / 2:
                    # counted when the lease was taken, a moment ago: it cannot have lapsed since (only
                    # a lapsed lease can be taken, and this process runs the job only once at a time)
                    return lease.calls
                count = 0  # counted already; only the fence is checked
            try:
                calls = int(self._extend_one(lease, count=count))
            except REDIS_DOWN as exc:
                if not (lease.recorded and lease.in_sql):
                    raise DependencyUnavailableError("redis", f"lease of job {lease.job_id}: {exc}") from exc
                # the job table holds the fence while Redis is down, and counts the call (its count may
                # lag Redis' by calls it has not been told of yet: the larger one stands)
                counted = records.count_call(lease.job_id, lease.token)
                if counted is None:
                    lease.lost = True
                    lease.check()
                calls = max(lease.calls + count, int(counted or 0))
            if calls < 0:
                lease.lost = True
                lease.check()
            lease.calls = calls
        return calls

    def refund_call(self, lease: Lease, *, sent: bool = False) -> None:
        """A counted call is not charged to the job: it never reached the provider (its breaker refused
        it), or it did (``sent``: a failed half-open probe), and then it stays counted as sent."""
        with lease._lock:
            lease.calls = max(0, lease.calls - 1)
            # if Redis cannot be told, the count stays one high: the budget errs on the side of fewer calls
            with contextlib.suppress(*REDIS_DOWN):
                pipe = self.client.pipeline(transaction=False)
                pipe.hincrby(keys.job_lease(lease.job_id), "calls", -1)
                if not sent:
                    pipe.hincrby(keys.job_lease(lease.job_id), "sent", -1)
                pipe.execute()

    def _extend_one(self, lease: Lease, *, count: int = 0) -> int:
        calls = int(
            self._extend(
                keys=[keys.job_lease(lease.job_id)],
                args=[
                    lease.token,
                    int(self.ttl_s * 1000),
                    LEASE_RECORD_TTL_S,
                    lease.owner,
                    lease.calls,
                    count,
                ],
            )
        )
        if calls >= 0:
            lease.extended_at = self._clock()
        return calls

    # --- renewal -------------------------------------------------------------------------------------
    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def renew_all(self) -> None:
        """Extend every lease this process holds, in Redis and in the job table; a lease another run took
        is marked lost (its run stops at its next call or write). Raises nothing: a store that is down is
        tried again next time, and the other one keeps the lease meanwhile."""
        self.flush_releases()
        leases = self.held()
        redis_ok = sql_ok = True
        for lease in leases:
            if lease.lost:
                continue
            try:
                with lease._lock:
                    calls = self._extend_one(lease)
                if calls < 0:
                    log.warning("job %s: lease taken by a newer run; this run stops", lease.job_id)
                    lease.lost = True
                else:
                    lease.calls = calls
            except redis.RedisError:  # unreachable, refusing writes, or a script error: try again next beat
                redis_ok = False
        in_table = [lease for lease in leases if lease.recorded and not lease.lost]
        if in_table:
            try:
                refused = records.renew_leases(
                    [(lease.job_id, lease.owner, lease.token, lease.charged) for lease in in_table],
                    self._now() + timedelta(seconds=self.ttl_s),
                )
                for lease in in_table:
                    if lease.job_id in refused:
                        log.warning("job %s: the job table holds a newer run; this run stops", lease.job_id)
                        lease.lost = True
                    else:
                        lease.in_sql = True
            except Exception:  # an outage or a refused statement: try again next beat
                sql_ok = False
        if redis_ok or sql_ok or not leases:
            self._renewed_at = self._clock()

    def accepting(self) -> bool:
        """False once this process's leases have gone unrenewed for half their lifetime: it must not take
        new jobs it could not hold (the ones it runs are fenced)."""
        with self._lock:
            if not self._held:
                return True
        return self._clock() - self._renewed_at < self.ttl_s / 2

    # --- release -------------------------------------------------------------------------------------
    def release(self, lease: Lease, *, final: bool) -> None:
        """The run is over (``final``: its job has its outcome). The row's lease ended with the outcome
        write; this ends the Redis one, or leaves it to lapse if Redis cannot be told. A final release is
        sent with others (the job is done: its lease holding a moment longer changes nothing); any other
        at once, so the job's next run can take it."""
        with self._lock:
            if self._held.get(lease.job_id) is lease:
                del self._held[lease.job_id]
            if final:
                if not self._releases:
                    self._releases_since = self._clock()
                self._releases.append((lease.job_id, lease.token))
                due = (
                    len(self._releases) >= RELEASE_BATCH
                    or self._clock() - self._releases_since >= RELEASE_BATCH_WAIT_S
                )
        if final:
            if due:
                self.flush_releases()
            return
        self._give_back(lease.job_id, lease.token, END, refund=lease.precounted)

    def flush_releases(self) -> None:
        """Send the final releases waiting, in one pipeline (if Redis cannot take them, the leases lapse by
        themselves)."""
        with self._lock:
            pending, self._releases = self._releases, []
        if not pending:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, token in pending:
                self._release(
                    keys=[keys.job_lease(job_id)], args=[token, FINAL, 0, self.tombstone_s], client=pipe
                )
            pipe.execute()
        except REDIS_DOWN as exc:
            log.info("%d final lease releases not sent (%s); they lapse by themselves", len(pending), exc)

    def _give_back(
        self, job_id: str, token: int, mode: int, *, refund: bool = False, tombstone: bool = False
    ) -> None:
        ttl = self.tombstone_s if tombstone else 0
        try:
            self._release(keys=[keys.job_lease(job_id)], args=[token, mode, 1 if refund else 0, ttl])
        except REDIS_DOWN as exc:
            log.info("job %s: lease not given back in Redis (%s); it lapses by itself", job_id, exc)


def forget_job_lease(client: redis.Redis, job_id: str, *, sent: int = 0) -> None:
    """Drop a job's lease record (its provider calls with it): ``ultra jobs retry`` gives the job a new
    attempt budget. ``sent``: the calls the job's ledger holds, kept as sent so that a later run finds no
    call missing from it (billing/ledger.py). Raises ``DependencyUnavailableError`` if Redis cannot be
    told."""
    try:
        pipe = client.pipeline(transaction=True)
        pipe.delete(keys.job_lease(job_id))
        if sent:
            pipe.hset(keys.job_lease(job_id), "sent", sent)
            pipe.expire(keys.job_lease(job_id), LEASE_RECORD_TTL_S)
        pipe.execute()
    except REDIS_DOWN as exc:
        raise DependencyUnavailableError("redis", f"job {job_id}'s lease record: {exc}") from exc
