"""Fleet-wide cache counters, with nothing added to a cache hit.

Each ``DistributedCache`` keeps per-level counters in its own process (cache/base.py ``LevelStats``). A
tracked cache is read once per flush tick by the metrics buffer's thread: the change of each counter since
the previous tick goes to one Redis hash (``keys.metrics_cache()``) with HINCRBY, so the fleet's totals add
up across processes while counting adds nothing to a memory hit. Every ``SIZE_REPORT_S`` the process also
reports its levels' sizes (``keys.metrics_cache_sizes()``), so entries and utilization can be summed over
the live processes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ultra_tasks import keys
from ultra_tasks.cache.base import LevelStats
from ultra_tasks.metrics.buffer import BUFFER, MetricsBuffer

if TYPE_CHECKING:
    from ultra_tasks.cache.layered import DistributedCache

#: integer counters of LevelStats that are summed fleet-wide
COUNTERS = ("hits", "misses", "errors", "corrupt", "invalidations", "reads")
#: seconds between a process's cache size reports (the fleet reader drops reports six times as old)
SIZE_REPORT_S = 10.0


@dataclass
class _Tracked:
    """One cache's level counters and what was already sent of them (holds no reference to the cache)."""

    levels: dict[str, LevelStats]
    sent: dict[tuple[str, str], float] = field(default_factory=dict)
    cache: weakref.ref[DistributedCache] | None = None
    report_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def deltas(self) -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        for level, stats in self.levels.items():
            for name in (*COUNTERS, "read_seconds"):
                now = float(getattr(stats, name))
                delta = now - self.sent.get((level, name), 0.0)
                if delta:
                    self.sent[(level, name)] = now
                    out.append((level, name, delta))
        return out


class CacheMetricsTracker:
    """Sends the deltas of every tracked cache's counters with each flush of the metrics buffer."""

    def __init__(self, buffer: MetricsBuffer = BUFFER) -> None:
        self.buffer = buffer
        self._tracked: list[_Tracked] = []
        #: caches gone since the last tick; their finalizer only appends here (it may run inside any code,
        #: even code holding a lock, so it must take none); their last counts go with the next flush
        self._retired: list[_Tracked] = []
        self._lock = threading.Lock()
        self._last_sizes = 0.0
        self._registered = False

    def track(self, cache: DistributedCache) -> None:
        levels: dict[str, LevelStats] = {"memory": cache.memory.stats}
        if cache.disk is not None:
            levels["disk"] = cache.disk.stats
        if cache.redis is not None:
            levels["redis"] = cache.redis.stats
        entry = _Tracked(levels, cache=weakref.ref(cache))
        with self._lock:
            self._tracked.append(entry)
            if not self._registered:
                self.buffer.add_source(self.collect)
                self._registered = True
        # a cache that goes away still has its last counts sent; the finalizer holds only its stats
        weakref.finalize(cache, self._retired.append, entry)

    def collect(self, buffer: MetricsBuffer) -> None:
        """Called by the buffer's thread before each flush."""
        retired: list[_Tracked] = []
        while self._retired:
            retired.append(self._retired.pop())
        with self._lock:
            for entry in retired:
                if entry in self._tracked:
                    self._tracked.remove(entry)
            tracked = list(self._tracked)
        for entry in (*tracked, *retired):
            self._send(entry, buffer)
        for entry in retired:
            # its size report is stale now: the fleet reader drops reports this old
            buffer.set(keys.metrics_cache_sizes(), _process_id(entry), json.dumps({"at": 0}))
        if time.monotonic() - self._last_sizes >= SIZE_REPORT_S:
            self._last_sizes = time.monotonic()
            for entry in tracked:
                cache = entry.cache() if entry.cache is not None else None
                if cache is not None:
                    buffer.set(keys.metrics_cache_sizes(), _process_id(entry), json.dumps(_sizes(cache)))

    @staticmethod
    def _send(entry: _Tracked, buffer: MetricsBuffer) -> None:
        key = keys.metrics_cache()
        for level, name, delta in entry.deltas():
            if name == "read_seconds":
                buffer.incr_float(key, f"{level}:{name}", delta)
            else:
                buffer.incr(key, f"{level}:{name}", int(delta))


def _process_id(entry: _Tracked) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{entry.report_id}"


def _sizes(cache: DistributedCache) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": time.time(),
        "host": socket.gethostname(),
        "memory_entries": cache.memory.size(),
        "memory_capacity": cache.memory.max_size,
    }
    # only a disk level that is open: sizing a closed one would reopen (and re-create) its directory
    if cache.disk is not None and getattr(cache.disk, "_cache", None) is not None:
        # the disk level is shared by the processes of a machine: the fleet reader counts each directory once
        out["disk_dir"] = str(cache.disk.directory)
        out["disk_entries"] = cache.disk.size()
        out["disk_bytes"] = cache.disk.volume_bytes()
        out["disk_capacity_bytes"] = cache.disk.size_limit_bytes
    return out


#: the process-wide tracker (DistributedCache registers itself here)
TRACKER = CacheMetricsTracker()


def _after_fork_in_child() -> None:
    # The parent sends what its caches counted before the fork; the child counts from here on (and must
    # not inherit a lock some thread of the parent held at fork time).
    TRACKER._lock = threading.Lock()
    for entry in TRACKER._tracked:
        entry.deltas()


os.register_at_fork(after_in_child=_after_fork_in_child)


def track_cache(cache: DistributedCache) -> None:
    """Count ``cache``'s hits, misses and errors in the fleet-wide cache metrics."""
    TRACKER.track(cache)
