"""Fleet-wide concurrency caps per deployment (``max_concurrency`` in the deployments file), in Redis.

Each call in flight holds a slot: a member of the deployment's sorted set, scored with the time its lease
lapses (Redis ``TIME``), so a worker killed mid-call frees its slots when their leases lapse instead of
holding them forever. Taking a slot is one script (drop lapsed leases, count, add), giving it back one
``ZREM``: two round trips per call, paid only by deployments that set a cap.

Redis unreachable: the cap is kept per process only (the router's in-flight count, which the pipeline
checks first anyway), logged and counted in ``redis_unavailable_calls``.
"""

from __future__ import annotations

import logging
import secrets

import redis

from ultra_tasks import keys
from ultra_tasks.errors import UltraTasksError
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds a slot outlives its call's timeout before it lapses (a killed worker's slots come back)
LEASE_MARGIN_S = 30.0

# KEYS[1]: the deployment's slots; ARGV: cap, lease seconds, member. 1 when a slot was taken, else 0.
ACQUIRE_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 60)
return 1
"""


class ConcurrencyCapReached(UltraTasksError):
    """Every slot of the deployment is taken, fleet-wide: the call goes to another deployment or waits."""

    def __init__(self, deployment: str, cap: int) -> None:
        super().__init__(f"{deployment}: {cap} calls in flight across the fleet (max_concurrency)")
        self.deployment = deployment
        self.retry_after = 1.0


class ConcurrencyLimiter:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._script = client.register_script(ACQUIRE_LUA)
        self.redis_unavailable_calls = 0

    def acquire(self, deployment: str, cap: int, call_timeout_s: float) -> str | None:
        """A slot's token; ConcurrencyCapReached when all ``cap`` are taken; None when Redis is down (the
        process's own cap still holds)."""
        token = secrets.token_hex(8)
        try:
            taken = self._script(
                keys=[keys.deployment_slots(deployment)], args=[cap, call_timeout_s + LEASE_MARGIN_S, token]
            )
        except REDIS_DOWN as exc:
            self.redis_unavailable_calls += 1
            log.warning("%s: concurrency cap kept per process only, Redis unavailable (%s)", deployment, exc)
            return None
        if not int(taken):
            raise ConcurrencyCapReached(deployment, cap)
        return token

    def release(self, deployment: str, token: str | None) -> None:
        if token is None:
            return
        try:
            self.client.zrem(keys.deployment_slots(deployment), token)
        except REDIS_DOWN:
            self.redis_unavailable_calls += 1  # the slot lapses with its lease
