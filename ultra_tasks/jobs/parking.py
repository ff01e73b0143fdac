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
(Before, every such event released every parked job: a flapping breaker in EMERGENCY sent the held-back
backlog through the workers to be parked again each time, and in DEGRADED it let slotted ``llm.low``
jobs run on their reservations at once, past the mode's rate.)
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
#:   mode returning to NORMAL, since a released slotted job runs without asking again.
CAUSES = keys.PARK_CAUSES
CAUSE_PROVIDER, CAUSE_MODE, CAUSE_SLOT = CAUSES
#: what an operator's wake (``Parking.wake``) releases: every parked job, whatever its cause
ALL = ("*",)

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
    ) -> None:
        super().__init__(name="parked-releaser", daemon=True)
        self.parking = Parking(client)
        self.client = client
        self.publish = publish
        self.poll_s = poll_s
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.parked_wake(), keys.breaker_events(), keys.mode_events())
                next_poll = 0.0
                while not self._stop_event.is_set():
                    message = pubsub.get_message(timeout=min(self.poll_s, 0.5))
                    causes = released_by(message) if message is not None else ()
                    if causes:
                        released = self.parking.release(self.publish, causes=causes)
                        if released:
                            log.info("released %d parked jobs (woken for: %s)", released, ", ".join(causes))
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


def released_by(message: dict[str, Any]) -> tuple[str, ...]:
    """The causes whose parked jobs this pub/sub event releases now (ALL: every parked job; (): none)."""
    channel = _text(message.get("channel"))
    try:
        event = json.loads(message.get("data") or "{}")
    except (TypeError, ValueError):
        return ()
    if channel == keys.parked_wake():
        return ALL
    if channel == keys.breaker_events():
        return (CAUSE_PROVIDER,) if event.get("to") in ("closed", "half-open", "disabled") else ()
    if channel == keys.mode_events():
        before, after = event.get("from"), event.get("to")
        if after == "NORMAL" and before in ("DEGRADED", "EMERGENCY"):
            return (CAUSE_MODE, CAUSE_SLOT)
        if (before, after) == ("EMERGENCY", "DEGRADED"):
            # DEGRADED still slows llm.low: slotted jobs keep their slots, held-back ones go and reserve one
            return (CAUSE_MODE,)
    return ()
