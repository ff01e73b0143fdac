"""Dead workers found by their liveness beats, and their running jobs sent elsewhere at once.

Every worker process beats into one sorted set (``keys.workers_seen``: identity -> Redis time of its last
beat) every WORKER_HEARTBEAT_INTERVAL. Beat's reaper (``ultra.ops.reap``) takes a worker whose last beat
is WORKER_DEAD_AFTER old for dead: it ends the leases of the jobs it was running, in the job table and in
Redis, and publishes those jobs again. The run that gets the message takes the lapsed lease over with a
newer token and continues the job's attempt budget (jobs/lease.py), so a job whose worker was killed runs
again within seconds instead of when its lease would have lapsed.

Safety does not rest on the verdict: every call and write of a run is fenced by its lease's token, so a
worker taken for dead that was only cut off from Redis writes nothing once its job was taken over (a call
it had in flight may be made again, as for a worker that died). Times are Redis's own (``TIME``), so
clocks of other machines do not matter. Silence that is not death is not judged: a Redis that restarted a
moment ago (it has lost or not yet received the beats) until it has been up two WORKER_DEAD_AFTERs, a
fleet where no worker beat lately (Redis or the network failed them all), and the round after a gap in
the reaper's own rounds (Redis or beat was away, and the beats with them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.config import Settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import records

log = logging.getLogger(__name__)

# KEYS[1] the seen set. ARGV: identity. Records a beat at Redis's time.
BEAT_LUA = r"""
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
"""
# KEYS[1] the seen set, KEYS[2] the reaper's last round. ARGV: dead after (ms). The identities whose last
# beat is older, unless the fleet looks silent rather than dead: no worker beat within the window (Redis
# or the network failed them all; a worker must exist to take the jobs anyway), or the reaper's previous
# round was longer ago than the window (Redis or beat was away, and the workers' beats with them).
DEAD_LUA = r"""
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('SET', KEYS[2], now, 'PX', window * 10)
if now - last > window then return {} end
local cutoff = now - window
if redis.call('ZCOUNT', KEYS[1], '(' .. cutoff, '+inf') == 0 then return {} end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 100)
"""
# KEYS[1] a job's lease hash. ARGV: the dead owner. Ends the lease if that owner still holds it.
LAPSE_LUA = r"""
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'exp', 0)
  return 1
end
return 0
"""


@dataclass
class ReapReport:
    #: workers taken for dead and forgotten
    dead: list[str] = field(default_factory=list)
    #: jobs sent to other workers
    republished: list[str] = field(default_factory=list)
    #: why nothing was judged (Redis restarted a moment ago), or None
    skipped: str | None = None


def beat(client: redis.Redis, identity: str) -> None:
    """One liveness beat of the worker process ``identity``."""
    client.register_script(BEAT_LUA)(keys=[keys.workers_seen()], args=[identity])


def forget(client: redis.Redis, identity: str) -> None:
    """A worker that stops cleanly says so (Celery requeues what it had not finished)."""
    client.zrem(keys.workers_seen(), identity)


def reap(
    client: redis.Redis,
    settings: Settings,
    publish: Callable[[str, str, dict[str, Any]], bool],
) -> ReapReport:
    """Find dead workers and send their running jobs elsewhere. A database error leaves the worker for
    the next round (its leases lapse on their own meanwhile); Redis errors propagate to the caller."""
    report = ReapReport()
    uptime = int(client.info("server").get("uptime_in_seconds", 0))
    if uptime < 2 * settings.worker_dead_after:
        report.skipped = (
            f"Redis has been up {uptime} s; beats are judged after {2 * settings.worker_dead_after:g} s"
        )
        return report
    found = client.register_script(DEAD_LUA)(
        keys=[keys.workers_seen(), keys.reaper_round()], args=[int(settings.worker_dead_after * 1000)]
    )
    lapse = client.register_script(LAPSE_LUA)
    for identity in (d.decode() if isinstance(d, bytes) else str(d) for d in found):
        try:
            jobs = records.lapse_leases_of(identity)
        except DependencyUnavailableError as exc:
            log.warning("worker %s looks dead, but its jobs cannot be read (%s); next round", identity, exc)
            continue
        if jobs:
            pipe = client.pipeline(transaction=False)
            for job_id, _queue, _request in jobs:
                lapse(keys=[keys.job_lease(job_id)], args=[identity], client=pipe)
            pipe.execute()
            log.warning(
                "worker %s has not beaten for %g s: its %d running jobs go to other workers",
                identity,
                settings.worker_dead_after,
                len(jobs),
            )
        for job_id, queue, request in jobs:
            if publish(job_id, queue, request):
                report.republished.append(job_id)
        client.zrem(keys.workers_seen(), identity)
        report.dead.append(identity)
    return report
