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
thread (:class:`Releaser`); any number may run at once. A breaker that closes or half-opens, or a mode
that improves, wakes them to release every parked job at once rather than at its due time.
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

# KEYS: inflight, envelopes, parked:<q>... ; ARGV: now, lease, limit, release_all (1/0), queues...
CLAIM_LUA = r"""
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local all = ARGV[4] == '1'
local sets = {}
for i = 5, #ARGV do sets[ARGV[i]] = KEYS[i - 2] end
-- releases whose releaser died: back where they came from, due now
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, id in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], id)
  local env = redis.call('HGET', KEYS[2], id)
  if env then
    local q = cjson.decode(env)['queue']
    if sets[q] then redis.call('ZADD', sets[q], ARGV[1], id) end
  end
end
local out = {}
-- ARGV[1] as given: tostring() of a Lua number keeps 14 digits and could round 'now' below a score
local upto = all and '+inf' or ARGV[1]
for i = 5, #ARGV do
  local q = ARGV[i]
  if #out >= limit then break end
  local ids = redis.call('ZRANGEBYSCORE', sets[q], '-inf', upto, 'LIMIT', 0, limit - #out)
  for _, id in ipairs(ids) do
    redis.call('ZREM', sets[q], id)
    local env = redis.call('HGET', KEYS[2], id)
    if env then
      redis.call('ZADD', KEYS[1], now + lease, id)
      table.insert(out, id)
      table.insert(out, env)
    end
  end
end
return out
"""

# KEYS: inflight, envelopes, parked:<q>... ; ARGV: id
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
        return [keys.parked_inflight(), keys.parked_jobs(), *(keys.parked(q) for q in self.queues)]

    def park(self, job_id: str, queue: str, payload: dict[str, Any], due_at: float, reason: str) -> None:
        """Park ``job_id`` off ``queue`` until ``due_at`` (epoch seconds). Raises when Redis is down (the
        caller then leaves the job where it is: in the broker)."""
        if queue not in self.queues:
            raise ValueError(f"cannot park a job of queue {queue!r}; parked queues: {self.queues}")
        envelope = json.dumps(
            {"queue": queue, "payload": payload, "reason": reason[:500], "parked_at": time.time()},
            separators=(",", ":"),
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.parked_jobs(), job_id, envelope)
        pipe.zadd(keys.parked(queue), {job_id: due_at})
        pipe.execute()

    def claim(self, *, release_all: bool = False, limit: int = CLAIM_BATCH) -> list[ParkedJob]:
        """Take due jobs (every parked job with ``release_all``) for release, highest queue first."""
        now = time.time()
        raw = self._claim(
            keys=self._keys(),
            args=[now, RELEASE_LEASE_S, limit, "1" if release_all else "0", *self.queues],
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
        """Ask every releaser to release all parked jobs now."""
        self.client.publish(keys.parked_wake(), json.dumps({"reason": reason}))

    def release(
        self, publish: Callable[[str, str, dict[str, Any]], bool], *, release_all: bool = False
    ) -> int:
        """Claim due jobs and publish each onto its queue; returns how many were published. A job whose
        publish fails stays claimed and returns to its set when its lease lapses."""
        released = 0
        while True:
            batch = self.claim(release_all=release_all)
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
    """Releases due parked jobs every ``poll_s`` seconds, and all of them at once when a breaker closes or
    half-opens or the operation mode improves (heard on pub/sub)."""

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
                    release_all = message is not None and _wakes(message)
                    if release_all or time.monotonic() >= next_poll:
                        released = self.parking.release(self.publish, release_all=release_all)
                        if released:
                            log.info("released %d parked jobs%s", released, " (wake)" if release_all else "")
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


_BETTER = {("EMERGENCY", "DEGRADED"), ("EMERGENCY", "NORMAL"), ("DEGRADED", "NORMAL")}


def _wakes(message: dict[str, Any]) -> bool:
    """Does this event mean parked work may run now?"""
    channel = _text(message.get("channel"))
    try:
        event = json.loads(message.get("data") or "{}")
    except (TypeError, ValueError):
        return False
    if channel == keys.parked_wake():
        return True
    if channel == keys.breaker_events():
        return event.get("to") in ("closed", "half-open", "disabled")
    if channel == keys.mode_events():
        return (event.get("from"), event.get("to")) in _BETTER
    return False
