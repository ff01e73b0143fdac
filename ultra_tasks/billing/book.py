"""A tenant's budget book for one period in Redis: settled spend and open reservations, in nano-USD.

Every step is one Lua script on Redis' clock, so no two calls can both take the last of a budget
(check-then-spend is one step):

- **reserve** first counts reservations whose deadline passed (their worker died, or never settled) as
  spent at their worst case, then takes the call's worst case if spent + reserved + it fits under the
  limit. Idempotent by attempt id: the same call reserving twice holds one reservation.
- **settle** turns a reservation into the call's actual cost (0: a refund). A reservation that lapsed
  before its call settled was counted at its worst case; its late settlement corrects the count. A
  reservation settled twice, or never made, changes nothing.
- **build**: a book that Redis lost (or that a new period starts) has no ``built`` mark; reserve says so
  and the caller writes in the period's spend from the ledger (``ledger.charged_nusd``), once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis

from ultra_tasks import keys
from ultra_tasks.billing import ledger
from ultra_tasks.billing.budgets import Budget, period_bounds, period_id
from ultra_tasks.clock import utcnow

#: days a period's book outlives the period (a late settlement, ``ultra usage`` of the last period)
BOOK_TTL_DAYS = 40

# ``n`` spells a number as Redis reads an integer (Lua's own tostring would write 1e+15)
_NOW = r"""
local function n(x) return string.format('%.0f', x) end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Reservations whose deadline passed: counted as spent at their worst case, kept as lapsed for a late
# settlement. KEYS: book, res, amt, lapsed.
_EXPIRE = r"""
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, id in ipairs(gone) do
  local a = redis.call('HGET', KEYS[3], id)
  if a then
    redis.call('HINCRBY', KEYS[1], 'reserved', n(-tonumber(a)))
    redis.call('HINCRBY', KEYS[1], 'spent', a)
    redis.call('HSET', KEYS[4], id, a)
    local ttl = redis.call('TTL', KEYS[1])
    if ttl > 0 then redis.call('EXPIRE', KEYS[4], ttl) end
    redis.call('HDEL', KEYS[3], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
"""

# KEYS: book, res, amt, lapsed. ARGV: attempt, amount, limit, deadline ms from now, ttl s.
# Returns {1, spent, reserved} taken (or held already), {0, spent, reserved} does not fit, {-1} not built.
RESERVE_LUA = (
    _NOW
    + _EXPIRE
    + r"""
if redis.call('HGET', KEYS[1], 'built') ~= '1' then return {-1, 0, 0} end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {1, spent, reserved} end
local amount = tonumber(ARGV[2])
if spent + reserved + amount > tonumber(ARGV[3]) then return {0, spent, reserved} end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], n(now_ms + tonumber(ARGV[4])), ARGV[1])
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[2])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return {1, spent, reserved}
"""
)

# KEYS: book, res, amt, lapsed. ARGV: attempt, actual cost, ttl s (for a book that has none: every key
# here expires). Returns 1 settled, 2 settled late, 0 nothing.
SETTLE_LUA = r"""
local function n(x) return string.format('%.0f', x) end
local function keep()
  if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
local a = redis.call('HGET', KEYS[3], ARGV[1])
if a then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'reserved', n(-tonumber(a)))
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
  keep()
  return 1
end
local l = redis.call('HGET', KEYS[4], ARGV[1])
if l then
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'spent', n(tonumber(ARGV[2]) - tonumber(l)))
  keep()
  return 2
end
return 0
"""

# KEYS: book, res, amt, lapsed. ARGV: spent from the ledger, ttl s. Writes the totals into a book that
# is not built (reservations that survived are kept in ``reserved``); 1 written, 0 built already.
BUILD_LUA = r"""
local function n(x) return string.format('%.0f', x) end
if redis.call('HGET', KEYS[1], 'built') == '1' then return 0 end
local reserved = 0
for _, a in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(a) end
redis.call('HSET', KEYS[1], 'spent', ARGV[1], 'reserved', n(reserved), 'built', '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: book, res, amt, lapsed. Lapsed reservations counted, then the totals (empty when not built).
READ_LUA = (
    _NOW
    + r"""
if redis.call('HGET', KEYS[1], 'built') ~= '1' then return {-1, 0, 0} end
"""
    + _EXPIRE
    + r"""
return {1, tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'),
        tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')}
"""
)


@dataclass(frozen=True)
class Totals:
    spent_nusd: int
    reserved_nusd: int


@dataclass(frozen=True)
class Reserved:
    """A reservation's answer: ``ok`` taken, else it does not fit; the book's totals after."""

    ok: bool
    totals: Totals


class Book:
    """The budget books of every tenant, on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._build = client.register_script(BUILD_LUA)
        self._read = client.register_script(READ_LUA)

    @staticmethod
    def _keys(budget: Budget, period: str) -> list[str]:
        return list(keys.billing_book(budget.tenant_id, period))

    def _ttl(self, budget: Budget, now: datetime) -> int:
        _, end = period_bounds(budget.period, now)
        return int((end - now).total_seconds()) + BOOK_TTL_DAYS * 86400

    def build(self, budget: Budget, now: datetime | None = None) -> bool:
        """Write the period's spend from the ledger into a book Redis does not have (lost, or new)."""
        now = now or utcnow()
        start, end = period_bounds(budget.period, now)
        spent = ledger.charged_nusd(budget.tenant_id, start, end)
        return bool(
            self._build(
                keys=self._keys(budget, period_id(budget.period, now)), args=[spent, self._ttl(budget, now)]
            )
        )

    def reserve(
        self,
        budget: Budget,
        attempt: str,
        amount_nusd: int,
        deadline_s: float,
        *,
        now: datetime | None = None,
    ) -> tuple[Reserved, str]:
        """Reserve ``amount_nusd`` for the call ``attempt`` until ``deadline_s`` from now, if it fits under
        the budget's ceiling; (answer, the period it was reserved in: settle there)."""
        now = now or utcnow()
        period = period_id(budget.period, now)
        names = self._keys(budget, period)
        args: list[str | int] = [
            attempt,
            amount_nusd,
            budget.limit_nusd,
            int(deadline_s * 1000),
            self._ttl(budget, now),
        ]
        reply = self._reserve(keys=names, args=args)
        if int(reply[0]) == -1:
            self.build(budget, now)
            reply = self._reserve(keys=names, args=args)
        return Reserved(int(reply[0]) == 1, Totals(int(reply[1]), int(reply[2]))), period

    def settle(self, budget: Budget, period: str, attempt: str, actual_nusd: int) -> int:
        """The call's actual cost replaces its reservation (0 refunds it)."""
        ttl = self._ttl(budget, utcnow())
        return int(self._settle(keys=self._keys(budget, period), args=[attempt, actual_nusd, ttl]))

    def totals(self, budget: Budget, now: datetime | None = None) -> Totals:
        """The period's settled spend and open reservations (the book built from the ledger if missing)."""
        now = now or utcnow()
        names = self._keys(budget, period_id(budget.period, now))
        reply = self._read(keys=names, args=[])
        if int(reply[0]) == -1:
            self.build(budget, now)
            reply = self._read(keys=names, args=[])
        return Totals(int(reply[1]), int(reply[2]))
