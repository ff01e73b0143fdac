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
clocks of other machines do not matter. A Redis that restarted a moment ago has lost or not yet received
the beats, so nothing is judged until it has been up for two WORKER_DEAD_AFTERs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.config import Settings
from ultra_tasks.jobs import records

log = logging.getLogger(__name__)

# KEYS[1] the seen set. ARGV: identity. Records a beat at Redis's time.
BEAT_LUA = r"""
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000), ARGV[1])
return 1
"""
# KEYS[1] the seen set. ARGV: dead after (ms). The identities whose last beat is older.
DEAD_LUA = r"""
local t = redis.call('TIME')
local cutoff = t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[1])
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
    dead = [
        d.decode() if isinstance(d, bytes) else str(d)
        for d in client.eval(DEAD_LUA, 1, keys.workers_seen(), int(settings.worker_dead_after * 1000))
    ]
    for identity in dead:
        jobs = records.lapse_leases_of(identity)
        if jobs:
            pipe = client.pipeline(transaction=False)
            for job_id, _queue, _request in jobs:
                pipe.eval(LAPSE_LUA, 1, keys.job_lease(job_id), identity)
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
