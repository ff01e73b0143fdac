"""Fleet-wide rate limits per provider (requests/min and tokens/min), atomic in Redis.

GCRA (the generic cell rate algorithm) in one Lua script on Redis' clock: both limits are checked
together and only consumed together, so a refused call takes nothing. ``acquire`` answers how long to
wait; the caller waits in place up to RATE_LIMIT_MAX_WAIT, beyond which the job is deferred.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.errors import UltraTasksError

GCRA_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local specs = cjson.decode(ARGV[1])
local wait, tats = 0, {}
for i, spec in ipairs(specs) do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + spec.cost * spec.interval
  local allow_at = new_tat - spec.burst * spec.interval
  if allow_at - now > wait then wait = allow_at - now end
  tats[i] = new_tat
end
if wait > 0 then return tostring(wait) end
for i, spec in ipairs(specs) do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil((tats[i] - now) * 1000) + 1000)
end
return '0'
"""


class RateLimitWaitTooLong(UltraTasksError):
    def __init__(self, provider: str, wait: float) -> None:
        super().__init__(f"{provider}: rate limit would need a {wait:.1f}s wait")
        self.provider = provider
        self.retry_after = wait


class RateLimiter:
    """Limits from PROVIDER_RATE_LIMITS: {"openai": {"rpm": 500, "tpm": 200000}}; unlisted: unlimited."""

    def __init__(self, client: redis.Redis, limits: dict[str, dict[str, float]]) -> None:
        self.client = client
        self.limits = limits
        self._script = client.register_script(GCRA_LUA)

    def limited(self, provider: str) -> bool:
        return bool(self.limits.get(provider))

    def acquire(self, provider: str, tokens: int) -> float:
        """0 if the call may go now (and it is counted); else the seconds to wait before asking again."""
        limits = self.limits.get(provider)
        if not limits:
            return 0.0
        names: list[str] = []
        specs: list[dict[str, Any]] = []
        for kind, cost in (("rpm", 1), ("tpm", tokens)):
            per_minute = limits.get(kind)
            if per_minute:
                interval = 60.0 / per_minute
                # burst: a second's worth of the limit, at least one call (or this call's tokens)
                burst = max(float(cost), per_minute / 60.0, 1.0)
                names.append(keys.rate_limit(provider, kind))
                specs.append({"cost": cost, "interval": interval, "burst": burst})
        return float(self._script(keys=names, args=[json.dumps(specs)]))
