"""What the operation mode does to a job about to run (documented in docs/modes.md).

- NORMAL: everything runs.
- DEGRADED: answers come from the cache where one exists, even for requests that are not deterministic
  (MODE_PREFER_CACHE); ``llm.low`` jobs start at most MODE_DEGRADED_LOW_RATE per minute fleet-wide, so the
  remaining capacity goes to higher priorities. Each low job reserves the next free start slot (one
  script in Redis) and is parked until it; released, it runs on its reservation without asking again, so
  a backlog of low jobs is released one slot at a time, not all at once to be parked again. The schedule
  belongs to one DEGRADED episode (its key names when the episode began), so the next episode starts with
  an empty one; no slot is reserved further ahead than PARK_MAX_WAIT (the job parks that long and asks
  again).
- EMERGENCY: only jobs from MODE_EMERGENCY_RUN_QUEUES (``llm.high``) run; the others are parked (holding no
  worker slot) and released as soon as the mode improves; the cache is preferred as in DEGRADED.

Workers read the mode from its Redis mirror, at most once per ``ModeReader.ttl_s`` per process: a change
reaches every worker within that time, without one SQL query per job.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import redis

from ultra_tasks import keys
from ultra_tasks.config import Settings
from ultra_tasks.mode.policy import Mode
from ultra_tasks.redis_client import REDIS_DOWN

#: the fleet-wide schedule that slows llm.low in DEGRADED, in the rate limiter's key space
DEGRADED_LOW_LIMIT = "mode-degraded-low"
#: payload flag of a low job released on its reserved slot (set by the worker that parked it)
SLOT_FLAG = "_slot_reserved"

# KEYS[1]: the schedule's next free slot (epoch s); ARGV[1]: seconds between starts, ARGV[2]: the furthest
# ahead a slot may be reserved (seconds). Returns the seconds until the slot this call reserved (0: now),
# or minus the seconds until the next free slot when that is further ahead (nothing reserved).
RESERVE_LUA = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
if slot - now > tonumber(ARGV[2]) then return tostring(now - slot) end
local nxt = slot + interval
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
return tostring(slot - now)
"""


class ModeReader:
    """The current mode from the Redis mirror, cached for ``ttl_s``; the last known mode (NORMAL at first)
    while Redis cannot answer, so an outage of Redis alone does not stop work that could run."""

    def __init__(self, client: redis.Redis, ttl_s: float = 1.0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._mode = Mode.NORMAL
        #: when the current mode began (the mirror's ``since``; "" if it does not say)
        self.since = ""
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def current(self, *, fresh: bool = False) -> Mode:
        """The mode; ``fresh`` reads Redis now (before parking a job: the mode may have just improved)."""
        now = time.monotonic()
        if not fresh and now - self._read_at < self.ttl_s:
            return self._mode
        with self._lock:
            if fresh or now - self._read_at >= self.ttl_s:
                with contextlib.suppress(*REDIS_DOWN):
                    value, since = self.client.hmget(keys.mode_current(), ["mode", "since"])
                    self._mode = Mode(_text(value)) if value else Mode.NORMAL
                    self.since = _text(since) if since else ""
                self._read_at = now
        return self._mode


@dataclass(frozen=True)
class Admission:
    """May the job run now? If not, how long it should stay parked and why."""

    run: bool
    prefer_cache: bool = False
    wait_s: float = 0.0
    reason: str = ""
    #: parked until a start slot reserved for it: released, it runs without asking again
    slot_reserved: bool = False


class ModeEffects:
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.reader = ModeReader(client)
        self._reserve = client.register_script(RESERVE_LUA)

    def admit(self, queue: str, payload: dict[str, object], mode: Mode | None = None) -> Admission:
        mode = mode or self.reader.current()
        if mode is Mode.NORMAL:
            return Admission(run=True)
        if mode is Mode.EMERGENCY and queue not in self.settings.mode_emergency_run_queues:
            # about to park on a cached reading: a job released because the mode just improved must not be
            # parked again on the old one
            mode = self.reader.current(fresh=True)
            if mode is Mode.NORMAL:
                return Admission(run=True)
        prefer_cache = self.settings.mode_prefer_cache
        if mode is Mode.EMERGENCY:
            if queue in self.settings.mode_emergency_run_queues:
                return Admission(run=True, prefer_cache=prefer_cache)
            return Admission(
                run=False,
                prefer_cache=prefer_cache,
                # released at once when the mode improves; this is only the next look if no event arrives
                wait_s=self.settings.health_check_interval,
                reason=(
                    f"operation mode EMERGENCY: {queue} jobs are parked until the mode improves "
                    f"(only {', '.join(self.settings.mode_emergency_run_queues) or 'no'} queues run)"
                ),
            )
        rate = self.settings.mode_degraded_low_rate
        if queue == keys.QUEUE_LOW and rate > 0 and not payload.get(SLOT_FLAG):
            try:
                slot_key = keys.rate_limit(DEGRADED_LOW_LIMIT, f"slot:{self.reader.since}")
                wait = float(self._reserve(keys=[slot_key], args=[60.0 / rate, self.settings.park_max_wait]))
            except REDIS_DOWN:
                wait = 0.0  # the schedule cannot be read: run rather than stall
            if wait < 0:  # the schedule is full as far ahead as a park may last: look again then
                return Admission(
                    run=False,
                    prefer_cache=prefer_cache,
                    wait_s=self.settings.park_max_wait,
                    reason=(
                        "operation mode DEGRADED: llm.low is slowed to "
                        f"{self.settings.mode_degraded_low_rate:g} jobs/min and its schedule is full for "
                        f"the next {-wait:.0f}s"
                    ),
                )
            if wait > 0.05:
                return Admission(
                    run=False,
                    prefer_cache=prefer_cache,
                    wait_s=wait,
                    slot_reserved=True,
                    reason=(
                        "operation mode DEGRADED: llm.low is slowed to "
                        f"{self.settings.mode_degraded_low_rate:g} jobs/min"
                    ),
                )
        return Admission(run=True, prefer_cache=prefer_cache)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
