"""Fleet-wide rate limits per provider (requests/min and tokens/min), atomic in Redis.

GCRA (the generic cell rate algorithm) in one Lua script on Redis' clock: both limits are checked and
consumed together, so a refused call takes nothing. To keep a Redis round trip off most calls, a process
asks for a small lease of permits at once (never more than the limit's burst, and only what GCRA admits
now); the lease lapses after the time GCRA accounted it for, so the fleet stays within its limits up to one
lease per process. ``acquire`` answers how long to wait; the caller waits in place up to
RATE_LIMIT_MAX_WAIT, beyond which the job is deferred.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.errors import UltraTasksError

#: most permits one process takes at once
MAX_LEASE = 16
#: shortest time a lease stays usable (seconds), however fine the limit
MIN_LEASE_TTL_S = 0.05

# ARGV[1]: [{interval, burst, cost}] per limit; ARGV[2]: permits wanted. Grants as many as GCRA admits now
# (at most wanted, at least one) or none and the wait for one. Returns "granted wait accounted_seconds".
GCRA_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local specs = cjson.decode(ARGV[1])
local wanted = tonumber(ARGV[2])
local n, wait, tats = wanted, 0, {}
for i, spec in ipairs(specs) do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local step = spec.cost * spec.interval
  local fits = math.floor((now - tat + spec.burst * spec.interval) / step + 1e-9)
  if fits < n then n = fits end
  local w = tat + step - spec.burst * spec.interval - now
  if w > wait then wait = w end
end
if n < 1 then return '0 ' .. tostring(wait) .. ' 0' end
local span = 0
for i, spec in ipairs(specs) do
  local new_tat = tats[i] + n * spec.cost * spec.interval
  if new_tat - now > span then span = new_tat - now end
  redis.call('SET', KEYS[i], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return tostring(n) .. ' 0 ' .. tostring(span)
"""


class RateLimitWaitTooLong(UltraTasksError):
    def __init__(self, provider: str, wait: float) -> None:
        super().__init__(f"{provider}: rate limit would need a {wait:.1f}s wait")
        self.provider = provider
        self.retry_after = wait


@dataclass
class _Lease:
    requests: int
    tokens_each: int
    expires: float  # monotonic


class RateLimiter:
    """Limits from PROVIDER_RATE_LIMITS: {"openai": {"rpm": 500, "tpm": 200000}}; unlisted: unlimited."""

    def __init__(self, client: redis.Redis, limits: dict[str, dict[str, float]]) -> None:
        self.client = client
        self.limits = limits
        self._script = client.register_script(GCRA_LUA)
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def limited(self, provider: str) -> bool:
        return bool(self.limits.get(provider))

    def acquire(self, provider: str, tokens: int) -> float:
        """0 if the call may go now (and it is counted); else the seconds to wait before asking again."""
        limits = self.limits.get(provider)
        if not limits:
            return 0.0
        with self._lock:
            lease = self._leases.get(provider)
            if (
                lease
                and lease.requests > 0
                and lease.tokens_each >= tokens
                and time.monotonic() < lease.expires
            ):
                lease.requests -= 1
                return 0.0
        names: list[str] = []
        specs: list[dict[str, Any]] = []
        wanted = MAX_LEASE
        for kind, cost in (("rpm", 1), ("tpm", tokens)):
            per_minute = limits.get(kind)
            if per_minute:
                interval = 60.0 / per_minute
                # burst: a second's worth of the limit, at least one call (or this call's tokens)
                burst = max(float(cost), per_minute / 60.0, 1.0)
                wanted = min(wanted, max(1, int(burst // cost)))
                names.append(keys.rate_limit(provider, kind))
                specs.append({"cost": cost, "interval": interval, "burst": burst})
        granted, wait, span = (
            float(x) for x in str(self._script(keys=names, args=[json.dumps(specs), wanted])).split()
        )
        if granted < 1:
            return max(wait, 1e-3)
        with self._lock:
            # one permit is this call's; the rest stay usable for the time GCRA accounted them
            self._leases[provider] = _Lease(
                int(granted) - 1, tokens, time.monotonic() + max(span, MIN_LEASE_TTL_S)
            )
        return 0.0
