"""The cache as the fleet counts it: per-level counters every process adds to (metrics/cache.py writes them)
and the sizes each live process reports.

A size report older than SIZE_STALE_S belongs to a process that is gone: it is left out of the sums and
removed, the one write of this reader, so the hash does not grow with every process that ever ran.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.redis_client import REDIS_DOWN

#: a size report older than this belongs to a process that is gone (seconds); processes report every 10 s
SIZE_STALE_S = 60.0


@dataclass(frozen=True)
class CacheLevel:
    """One level's counters, summed over every process since the counters began."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    invalidations: int = 0
    reads: int = 0
    read_seconds: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.reads if self.reads else None

    @property
    def avg_read_us(self) -> float | None:
        return self.read_seconds / self.reads * 1e6 if self.reads else None

    def to_json(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "invalidations": self.invalidations,
            "reads": self.reads,
            "hit_rate": self.hit_rate,
            "avg_read_us": self.avg_read_us,
        }


@dataclass(frozen=True)
class CacheSizes:
    """Entries and capacity summed over live processes; a machine's disk level counted once."""

    entries: dict[str, float] = field(default_factory=dict)
    memory_capacity: float = 0.0
    disk_bytes: float = 0.0
    disk_capacity_bytes: float = 0.0


@dataclass(frozen=True)
class FleetCache:
    levels: dict[str, CacheLevel]
    sizes: CacheSizes

    def to_json(self) -> dict[str, dict[str, Any]]:
        """Per level: hits, misses, errors, corrupt, invalidations, reads, hit_rate, avg_read_us."""
        return {level: stats.to_json() for level, stats in self.levels.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _levels(raw: dict[Any, Any]) -> dict[str, CacheLevel]:
    counts: dict[str, dict[str, float]] = defaultdict(dict)
    for raw_field, value in raw.items():
        level, _, stat = _text(raw_field).partition(":")
        try:
            counts[level][stat] = float(_text(value))
        except ValueError:
            continue
    return {
        level: CacheLevel(
            hits=int(c.get("hits", 0)),
            misses=int(c.get("misses", 0)),
            errors=int(c.get("errors", 0)),
            corrupt=int(c.get("corrupt", 0)),
            invalidations=int(c.get("invalidations", 0)),
            reads=int(c.get("reads", 0)),
            read_seconds=c.get("read_seconds", 0.0),
        )
        for level, c in sorted(counts.items())
    }


def _sizes(raw: dict[Any, Any], now: float) -> tuple[CacheSizes, list[str]]:
    entries: dict[str, float] = defaultdict(float)
    memory_capacity = 0.0
    disks: dict[tuple[str, str], dict[str, Any]] = {}
    stale: list[str] = []
    for raw_field, value in raw.items():
        try:
            report = json.loads(_text(value))
        except ValueError:
            report = {}
        if not isinstance(report, dict) or now - float(report.get("at") or 0) > SIZE_STALE_S:
            stale.append(_text(raw_field))
            continue
        entries["memory"] += float(report.get("memory_entries") or 0)
        memory_capacity += float(report.get("memory_capacity") or 0)
        if report.get("disk_dir"):
            # processes of one machine share a disk level: count each directory once (latest report)
            key = (str(report.get("host")), str(report["disk_dir"]))
            if key not in disks or disks[key]["at"] < report["at"]:
                disks[key] = report
    disk_bytes = disk_capacity = 0.0
    for report in disks.values():
        entries["disk"] += float(report.get("disk_entries") or 0)
        disk_bytes += float(report.get("disk_bytes") or 0)
        disk_capacity += float(report.get("disk_capacity_bytes") or 0)
    return CacheSizes(dict(sorted(entries.items())), memory_capacity, disk_bytes, disk_capacity), stale


def read_cache(client: redis.Redis, *, clock: Callable[[], float] = time.time) -> FleetCache:
    """Per-level counters ({} until some process reported) and the live processes' sizes."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.metrics_cache())
    pipe.hgetall(keys.metrics_cache_sizes())
    counters_raw, sizes_raw = pipe.execute()
    sizes, stale = _sizes(sizes_raw, clock())
    if stale:
        with contextlib.suppress(*REDIS_DOWN):  # a read-only replica: the reports go another time
            client.hdel(keys.metrics_cache_sizes(), *stale)
    return FleetCache(_levels(counters_raw), sizes)
