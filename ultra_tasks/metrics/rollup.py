"""The per-minute rollup the status page plots: one Redis hash per UTC minute (``keys.rollup_minute``),
kept ROLLUP_TTL_S (a bit over the longest window shown, 24 hours).

Two kinds of writers fill a minute's hash:

- workers count every job they finish (``count_job``): its status, and its wait (created → picked up) and
  run time (picked up → outcome) as one bucket of a fixed histogram each. The counts go through the
  process's metrics buffer (metrics/buffer.py), so a job adds a few dict increments and no Redis round trip;
- a sampler (beat's health check and the status page, ``record_sample``) writes what is read from shared
  state anyway: queue depths, parked jobs per queue, breakers' cumulative call and failure counters, the
  cache's cumulative hits and misses per level, and the mode. The reader turns cumulative counters into
  per-minute rates.

Hash fields: ``jobs:<status>``, ``wait:<i>`` and ``run:<i>`` (bucket index in HISTOGRAM_BOUNDS_S),
``depth:<queue>``, ``parked:<queue>``, ``calls:<breaker>``, ``failures:<breaker>``, ``hits:<level>``,
``misses:<level>``, ``mode`` and ``sampled_at`` (epoch seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.fleet import FleetSnapshot, Part, Store, read_fleet
from ultra_tasks.metrics.buffer import BUFFER, MetricsBuffer
from ultra_tasks.redis_client import shared_redis

log = logging.getLogger(__name__)

#: seconds a minute's hash is kept: the longest window (24 h) and an hour of slack
ROLLUP_TTL_S = 25 * 3600
#: upper bounds (seconds) of the wait and run-time histogram buckets; the last bucket is everything longer
HISTOGRAM_BOUNDS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
#: the bucket index of everything beyond the last bound
OVERFLOW_BUCKET = len(HISTOGRAM_BOUNDS_S)


def minute_of(at: float) -> str:
    """The rollup minute (yyyymmddHHMM, UTC) of an epoch time."""
    return time.strftime("%Y%m%d%H%M", time.gmtime(at))


def minute_start(minute: str) -> datetime:
    return datetime.strptime(minute, "%Y%m%d%H%M").replace(tzinfo=UTC)


def bucket_of(seconds: float) -> int:
    return bisect_left(HISTOGRAM_BOUNDS_S, seconds)


#: hash fields made once, not per job
_WAIT_FIELDS = tuple(f"wait:{i}" for i in range(OVERFLOW_BUCKET + 1))
_RUN_FIELDS = tuple(f"run:{i}" for i in range(OVERFLOW_BUCKET + 1))


class _MinuteKeys:
    """The current minute's key, recomputed once a minute rather than per job; the expiry is asked for
    once per key per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        self._key = ""

    def current(self, buffer: MetricsBuffer, now: float) -> str:
        if now < self._until:
            return self._key
        with self._lock:
            if now >= self._until:
                self._key = keys.rollup_minute(minute_of(now))
                self._until = (now // 60 + 1) * 60
                buffer.expire(self._key, ROLLUP_TTL_S)
        return self._key


_MINUTE = _MinuteKeys()


def count_job(
    status: str, wait_s: float | None, run_s: float | None, *, buffer: MetricsBuffer = BUFFER
) -> None:
    """Count one finished job in this minute's rollup (buffered; flushed with the other job metrics)."""
    key = _MINUTE.current(buffer, time.time())
    fields: tuple[str, ...] = (f"jobs:{status}",)
    if wait_s is not None:
        fields += (_WAIT_FIELDS[bucket_of(wait_s)],)
    if run_s is not None:
        fields += (_RUN_FIELDS[bucket_of(run_s)],)
    buffer.incr_fields(key, fields)


@dataclass(frozen=True)
class FleetSample:
    """What the sampler writes into the current minute: gauges and cumulative counters, as read."""

    mode: str | None = None
    #: messages waiting per queue
    depths: dict[str, int] = field(default_factory=dict)
    #: jobs parked off each LLM queue
    parked: dict[str, int] = field(default_factory=dict)
    #: breaker name → (cumulative successes + failures, cumulative failures)
    breakers: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: cache level → (cumulative hits, cumulative misses)
    cache: dict[str, tuple[int, int]] = field(default_factory=dict)


def sample_from_snapshot(snapshot: FleetSnapshot) -> FleetSample:
    """The parts of a fleet snapshot the rollup keeps; parts it lacks stay out."""
    mode = snapshot.mode.mode if snapshot.mode.source is not None else None
    breakers = {b.name: (b.successes + b.failures, b.failures) for b in snapshot.breakers or []}
    cache = {
        level: (c.hits, c.misses) for level, c in (snapshot.cache.levels if snapshot.cache else {}).items()
    }
    return FleetSample(mode, dict(snapshot.queues or {}), dict(snapshot.parked or {}), breakers, cache)


#: what the sampler reads: the mode and the gauges and counters it plots
SAMPLED_PARTS = (Part.MODE_MIRROR, Part.BREAKERS, Part.QUEUES, Part.PARKED, Part.CACHE)


def record_sample(client: redis.Redis, sample: FleetSample, *, at: float | None = None) -> None:
    """Write ``sample`` into its minute's hash (one pipelined HSET and EXPIRE); the last sample of a
    minute wins. Raises redis errors (callers log them: a missed sample is a gap, never a failure)."""
    at = time.time() if at is None else at
    mapping: dict[Any, Any] = {"sampled_at": f"{at:.3f}"}
    if sample.mode:
        mapping["mode"] = sample.mode
    for queue, n in sample.depths.items():
        mapping[f"depth:{queue}"] = str(n)
    for queue, n in sample.parked.items():
        mapping[f"parked:{queue}"] = str(n)
    for name, (calls, failures) in sample.breakers.items():
        mapping[f"calls:{name}"] = str(calls)
        mapping[f"failures:{name}"] = str(failures)
    for level, (hits, misses) in sample.cache.items():
        mapping[f"hits:{level}"] = str(hits)
        mapping[f"misses:{level}"] = str(misses)
    key = keys.rollup_minute(minute_of(at))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, ROLLUP_TTL_S)
    pipe.execute()


def sample_fleet(client: redis.Redis | None = None) -> None:
    """Read the parts of the fleet the plots need and record them (beat's health check calls this once per
    interval). Never raises: a sample that cannot be taken whole is a gap in the plots."""
    snapshot = read_fleet(parts=SAMPLED_PARTS, redis_client=client)
    if snapshot.store_failed(Store.REDIS):  # a broker alone down leaves out the depths, not the sample
        log.info("rollup sample not recorded: %s", "; ".join(u.reason for u in snapshot.unavailable.values()))
        return
    try:
        record_sample(client or shared_redis(), sample_from_snapshot(snapshot))
    except Exception as exc:  # a gap in the plots, never a failed health check
        log.info("rollup sample not recorded: %s", exc)
