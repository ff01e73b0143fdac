"""Outage parking: jobs that cannot run now wait in Redis, holding no worker slot, and go back onto their
own queue when they are due or when the reason they wait goes away.

Why not a Celery countdown: an ETA longer than the broker's visibility timeout is redelivered in a loop,
and a message with an ETA sits reserved in a worker. A parked job is only a member of a sorted set.

Layout (keys.py): one sorted set per LLM queue, ``parked:<queue>``, scored by the epoch second the job is
due; one hash of envelopes (queue, payload, reason), so a release needs no SQL (the database may be what
is down); and an ``inflight`` sorted set of releases under way. Releasing is at least once:

1. ``claim`` (one Lua script) moves due jobs from their queue's set into ``inflight`` with a lease and
   returns their envelopes; leases that lapsed (a releaser died) are first moved back into their sets;
2. the releaser publishes each job onto its queue;
3. ``done`` removes it from ``inflight``, and drops its envelope unless it was parked again meanwhile.

A job released twice runs once: execution is idempotent by job id. Every LLM worker runs a releaser
thread (:class:`Releaser`); any number may run at once.

Each job is parked for a *cause*, and a set per queue and cause (``parked_for``) indexes it, so an event
releases before their due time only the jobs it concerns: a breaker that closes, half-opens or is disabled
releases the jobs that no provider could take; a mode that improves releases the jobs it held back; a job
waiting for the start slot it reserved (DEGRADED) is released early only when the mode is NORMAL again.
Recovery ramps up: an event does not release its whole backlog at once onto a provider that has just
come back. The first releaser to hear it reschedules the jobs it concerns (one marker key per event, so
the fleet does it once): PARK_RAMP_FIRST of them due now, twice as many each PARK_RAMP_INTERVAL after, in
priority order; the due-time releases do the rest. A breaker that half-opens releases no more jobs than it
has probes left (CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS, less the one its caller took as it half-opened it).
An operator's wake releases everything at once.

Due times must not undo the ramp: jobs parked against an open breaker would all be due the moment it may
be probed, and the ones still queued when the probe closes it would reach the provider together. So of the
jobs parked against one open state (``carrier_wait``) only as many as it admits probes are due then; the
others wait for its close (the ramp), PARK_MAX_WAIT at the latest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.errors import CircuitOpenException
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds a claimed release may take before another releaser takes it over
RELEASE_LEASE_S = 30.0
#: most jobs one claim takes off the parked sets
CLAIM_BATCH = 200

#: why a job is parked, which decides what releases it before it is due (keys.PARK_CAUSES, in this order):
#: - provider: no entry of its chain could be called (breaker open, rate limit, quota): a breaker event
#:   releases it;
#: - mode: held back by the operation mode (EMERGENCY runs only some queues): a mode that improves
#:   releases it;
#: - slot: waiting for the start slot it reserved (DEGRADED slows llm.low): released early only by the
#:   mode returning to NORMAL, since a released slotted job runs without asking again;
#: - budget: its tenant's budget cannot hold its worst case now (billing/): a budget set or raised
#:   releases it, else it is due when reservations may have settled or the period rolls over.
CAUSES = keys.PARK_CAUSES
CAUSE_PROVIDER, CAUSE_MODE, CAUSE_SLOT, CAUSE_BUDGET = CAUSES
#: what an operator's wake (``Parking.wake``) releases: every parked job, whatever its cause
ALL = ("*",)
#: how an event releases the jobs parked for its causes (``released_by``)
AT_ONCE, RAMP, PROBES = "at-once", "ramp", "probes"
#: jobs rescheduled per pipeline when a ramp starts
RAMP_CHUNK = 1000
#: seconds a count of jobs parked against an open state outlives the moment it may be probed
CARRIER_KEY_GRACE_S = 60

# KEYS: inflight, envelopes, then per queue its parked set and its sets per cause (in ARGV's cause order)
# ARGV: now, lease, limit, what ('' due jobs, '*' every job, else causes joined by ','), number of causes,
#       causes..., queues...
CLAIM_LUA = r"""
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local what = ARGV[4]
local nc = tonumber(ARGV[5])
local cause_index = {}
for j = 1, nc do cause_index[ARGV[5 + j]] = j end
local queues = {}
local base = {}
for i = 6 + nc, #ARGV do
  table.insert(queues, ARGV[i])
  base[ARGV[i]] = 2 + (#queues - 1) * (1 + nc)
end
-- releases whose releaser died: back where they came from, due now
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  local env = redis.call('HGET', KEYS[2], id)
  if env then
    local e = cjson.decode(env)
    local b = base[e['queue']]
    if b then
      redis.call('ZADD', KEYS[b + 1], ARGV[1], id)
      local j = cause_index[e['cause'] or '']
      if j then redis.call('ZADD', KEYS[b + 1 + j], ARGV[1], id) end
    end
  end
end
-- where to look: the parked sets (0) for due jobs or every job, else the sets of the causes asked for
local sources = {}
if what == '' or what == '*' then
  sources = {0}
else
  for c in string.gmatch(what, '[^,]+') do
    if cause_index[c] then table.insert(sources, cause_index[c]) end
  end
end
-- ARGV[1] as given: tostring() of a Lua number keeps 14 digits and could round 'now' below a score
local upto = what == '' and ARGV[1] or '+inf'
local out = {}
local taken = 0
for _, q in ipairs(queues) do
  local b = base[q]
  for _, j in ipairs(sources) do
    if taken >= limit then break end
    local ids = redis.call('ZRANGEBYSCORE', KEYS[b + 1 + j], '-inf', upto, 'LIMIT', 0, limit - taken)
    for _, id in ipairs(ids) do
      redis.call('ZREM', KEYS[b + 1], id)
      for k = 1, nc do redis.call('ZREM', KEYS[b + 1 + k], id) end
      local env = redis.call('HGET', KEYS[2], id)
      if env then
        redis.call('ZADD', KEYS[1], now + lease, id)
        table.insert(out, id)
        table.insert(out, env)
        taken = taken + 1
      end
    end
  end
end
return out
"""

# KEYS: as CLAIM_LUA's ; ARGV: id
DONE_LUA = r"""
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 3, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then return 0 end
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class ParkedJob:
    job_id: str
    queue: str
    payload: dict[str, Any]
    reason: str
    parked_at: float


class Parking:
    """The parked jobs of the fleet, in Redis."""

    def __init__(self, client: redis.Redis, queues: tuple[str, ...] = keys.LLM_QUEUES) -> None:
        self.client = client
        self.queues = queues
        self._claim = client.register_script(CLAIM_LUA)
        self._done = client.register_script(DONE_LUA)

    def _keys(self) -> list[str]:
        per_queue = [[keys.parked(q), *(keys.parked_for(q, c) for c in CAUSES)] for q in self.queues]
        return [keys.parked_inflight(), keys.parked_jobs(), *(k for ks in per_queue for k in ks)]

    def park(
        self,
        job_id: str,
        queue: str,
        payload: dict[str, Any],
        due_at: float,
        reason: str,
        cause: str = CAUSE_PROVIDER,
    ) -> None:
        """Park ``job_id`` off ``queue`` until ``due_at`` (epoch seconds), for ``cause`` (one of CAUSES:
        what may release it sooner). Raises when Redis is down (the caller then leaves the job where it
        is: in the broker)."""
        if queue not in self.queues:
            raise ValueError(f"cannot park a job of queue {queue!r}; parked queues: {self.queues}")
        if cause not in CAUSES:
            raise ValueError(f"cannot park a job for cause {cause!r}; causes: {CAUSES}")
        envelope = json.dumps(
            {
                "queue": queue,
                "payload": payload,
                "reason": reason[:500],
                "cause": cause,
                "parked_at": time.time(),
            },
            separators=(",", ":"),
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.parked_jobs(), job_id, envelope)
        pipe.zadd(keys.parked(queue), {job_id: due_at})
        for other in CAUSES:  # parked again for another cause: only the new one may release it
            if other != cause:
                pipe.zrem(keys.parked_for(queue, other), job_id)
        pipe.zadd(keys.parked_for(queue, cause), {job_id: due_at})
        pipe.execute()

    def claim(self, *, causes: tuple[str, ...] = (), limit: int = CLAIM_BATCH) -> list[ParkedJob]:
        """Take for release, highest queue first: the jobs that are due; with ``causes``, every job
        parked for one of them instead (ALL: every parked job)."""
        what = ",".join(causes)  # ALL joins to '*'
        raw = self._claim(
            keys=self._keys(),
            args=[time.time(), RELEASE_LEASE_S, limit, what, len(CAUSES), *CAUSES, *self.queues],
        )
        jobs: list[ParkedJob] = []
        for job_id, envelope in zip(raw[0::2], raw[1::2], strict=True):
            data = json.loads(envelope)
            jobs.append(
                ParkedJob(
                    _text(job_id),
                    data["queue"],
                    data["payload"],
                    data.get("reason", ""),
                    float(data.get("parked_at", 0)),
                )
            )
        return jobs

    def done(self, job_id: str) -> None:
        self._done(keys=self._keys(), args=[job_id])

    def depths(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zcard(keys.parked(queue))
        return {q: int(n) for q, n in zip(self.queues, pipe.execute(), strict=True)}

    def due_at(self, job_id: str) -> float | None:
        """When a parked job is due (epoch seconds), or None if it is not parked."""
        for queue in self.queues:
            score = self.client.zscore(keys.parked(queue), job_id)
            if score is not None:
                return float(score)
        return None

    def wake(self, reason: str) -> None:
        """Ask every releaser to release all parked jobs now, whatever they wait for."""
        self.client.publish(keys.parked_wake(), json.dumps({"reason": reason}))

    def ramp(
        self,
        causes: tuple[str, ...],
        event: str,
        *,
        first: int,
        interval_s: float,
        only: int | None = None,
    ) -> int:
        """Reschedule the jobs parked for ``causes`` into a ramp: ``first`` of them due now, then twice as
        many every ``interval_s`` (``only``: just that many due now, the rest left as they are). Done once
        per ``event`` fleet-wide; returns how many jobs were rescheduled (0 if another releaser did it)."""
        if not self.client.set(keys.parked_ramp(event), "1", nx=True, ex=3600):
            return 0
        now = time.time()
        ordered: list[tuple[str, str]] = []  # (queue, id): highest queue first, then by due time
        for queue in self.queues:
            members: list[tuple[Any, float]] = []
            for cause in causes:
                found = self.client.zrange(keys.parked_for(queue, cause), 0, -1, withscores=True)
                members.extend((m, float(score)) for m, score in found)  # type: ignore[str-unpack]
            ordered.extend((queue, _text(m)) for m, _ in sorted(members, key=lambda m: m[1]))
        if only is not None:
            ordered = ordered[:only]
        for start in range(0, len(ordered), RAMP_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for i, (queue, job_id) in enumerate(ordered[start : start + RAMP_CHUNK], start):
                due = now + ramp_step(i, first) * interval_s if only is None else now
                # XX: only jobs still parked (a releaser may have claimed one meanwhile)
                pipe.zadd(keys.parked(queue), {job_id: due}, xx=True)
                for cause in causes:
                    pipe.zadd(keys.parked_for(queue, cause), {job_id: due}, xx=True)
            pipe.execute()
        return len(ordered)

    def release(
        self,
        publish: Callable[[str, str, dict[str, Any]], bool],
        *,
        causes: tuple[str, ...] = (),
    ) -> int:
        """Claim jobs as ``claim`` does and publish each onto its queue; returns how many were published.
        A job whose publish fails stays claimed and returns to its set when its lease lapses."""
        released = 0
        while True:
            batch = self.claim(causes=causes)
            for job in batch:
                if publish(job.job_id, job.queue, job.payload):
                    self.done(job.job_id)
                    released += 1
            if len(batch) < CLAIM_BATCH:
                return released


def carrier_wait(
    client: redis.Redis, refusal: CircuitOpenException, *, carriers: int, longest_s: float
) -> float:
    """Seconds a job refused by an open breaker (and by nothing else) waits: the refusal's retry_after for
    the first ``carriers`` jobs parked against that open state (they carry its probes), ``longest_s`` for
    the rest (a close releases them in a ramp before that). Redis down, or the state not known: the
    retry_after, as for any job."""
    if refusal.generation is None:
        return refusal.retry_after
    key = keys.park_carriers(refusal.name, refusal.generation)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, int(refusal.retry_after) + CARRIER_KEY_GRACE_S, nx=True)
        parked_before = int(pipe.execute()[0]) - 1
    except REDIS_DOWN:
        return refusal.retry_after
    if parked_before < carriers:
        return refusal.retry_after
    return max(refusal.retry_after, longest_s)


def ramp_step(index: int, first: int) -> int:
    """The step of a ramp in which the job at ``index`` goes: ``first`` jobs in step 0, then twice as many
    in each next step."""
    step, size, end = 0, first, first
    while index >= end:
        step, size = step + 1, size * 2
        end += size
    return step


def park_delay(seconds: float, *, at_least: float = 1.0, at_most: float = 300.0) -> float:
    """A due delay with jitter, so jobs parked together are not all released in the same instant."""
    base = min(max(seconds, at_least), at_most)
    return base + random.uniform(0, min(2.0, base * 0.2))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Releaser(threading.Thread):
    """Releases due parked jobs every ``poll_s`` seconds, and at once the jobs an event concerns (heard on
    pub/sub; see ``released_by``)."""

    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[str, str, dict[str, Any]], bool],
        poll_s: float = 1.0,
        *,
        ramp_first: int = 10,
        ramp_interval_s: float = 1.0,
        probes: int = 1,
    ) -> None:
        super().__init__(name="parked-releaser", daemon=True)
        self.parking = Parking(client)
        self.client = client
        self.publish = publish
        # the ramp's steps are due-time releases: polling more often than its interval keeps them on time
        self.poll_s = min(poll_s, ramp_interval_s)
        self.ramp_first, self.ramp_interval_s, self.probes = ramp_first, ramp_interval_s, probes
        self._stop_event = threading.Event()

    def on_event(self, message: dict[str, Any]) -> int:
        """Release what a pub/sub event concerns: at once, in a ramp, or as many as there are probes."""
        causes, how, event = released_by(message)
        if not causes:
            return 0
        if CAUSE_BUDGET in causes and causes != ALL:
            from ultra_tasks.billing import budgets

            budgets.forget()  # the jobs released check the budget just set, not this process's old copy
        if how == AT_ONCE:
            released = self.parking.release(self.publish, causes=causes)
        else:
            # the caller whose acquire half-opened the breaker holds one of its probes already
            only = self.probes - 1 if how == PROBES else None
            if only == 0:
                return 0
            self.parking.ramp(
                causes, event, first=self.ramp_first, interval_s=self.ramp_interval_s, only=only
            )
            released = self.parking.release(self.publish)
        if released:
            log.info("released %d parked jobs (woken for: %s, %s)", released, ", ".join(causes), how)
        return released

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(
                    keys.parked_wake(), keys.breaker_events(), keys.mode_events(), keys.budget_events()
                )
                next_poll = 0.0
                while not self._stop_event.is_set():
                    message = pubsub.get_message(timeout=min(self.poll_s, 0.5))
                    if message is not None:
                        self.on_event(message)
                    if time.monotonic() >= next_poll:
                        released = self.parking.release(self.publish)
                        if released:
                            log.info("released %d parked jobs (due)", released)
                        next_poll = time.monotonic() + self.poll_s
            except REDIS_DOWN as exc:
                log.warning("parked-job releaser: Redis unreachable (%s); retrying", exc)
                self._stop_event.wait(min(5.0, self.poll_s * 2))
            except Exception:
                log.exception("parked-job releaser failed; restarting it")
                self._stop_event.wait(1.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()


def released_by(message: dict[str, Any]) -> tuple[tuple[str, ...], str, str]:
    """What this pub/sub event releases now: (causes, how, event id). ``how``: AT_ONCE (an operator's
    wake), RAMP (a breaker that closed or was disabled, a mode that improved) or PROBES (a breaker that
    half-opened: no more jobs than it admits probes). No causes: nothing."""
    nothing: tuple[tuple[str, ...], str, str] = ((), AT_ONCE, "")
    channel = _text(message.get("channel"))
    try:
        event = json.loads(message.get("data") or "{}")
    except (TypeError, ValueError):
        return nothing
    if not isinstance(event, dict):
        return nothing
    if channel == keys.parked_wake():
        return ALL, AT_ONCE, ""
    if channel == keys.breaker_events():
        # the generation alone may repeat (a breaker whose state was deleted starts again at 0): with
        # the event's Redis time, the id is one transition's
        event_id = f"cb:{event.get('name')}:{event.get('gen')}:{event.get('at')}"
        if event.get("to") in ("closed", "disabled"):
            return (CAUSE_PROVIDER,), RAMP, event_id
        if event.get("to") == "half-open":
            return (CAUSE_PROVIDER,), PROBES, event_id
        return nothing
    if channel == keys.budget_events():
        return (CAUSE_BUDGET,), AT_ONCE, ""
    if channel == keys.mode_events():
        before, after = event.get("from"), event.get("to")
        event_id = f"mode:{before}:{after}:{event.get('at')}"
        if after == "NORMAL" and before in ("DEGRADED", "EMERGENCY"):
            return (CAUSE_MODE, CAUSE_SLOT), RAMP, event_id
        if (before, after) == ("EMERGENCY", "DEGRADED"):
            # DEGRADED still slows llm.low: slotted jobs keep their slots, held-back ones go and reserve one
            return (CAUSE_MODE,), RAMP, event_id
    return nothing
