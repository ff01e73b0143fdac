"""In-process counters flushed to Redis hashes in batches, so fleet-wide metrics cost no Redis round trip
on the hot path.

Each process adds to plain dicts under a lock; one daemon thread sends the sums with one pipelined
HINCRBY / HINCRBYFLOAT batch at most every ``FLUSH_INTERVAL_S``, and ``flush()`` runs once more at exit
(and from Celery's worker shutdown signals, see metrics/jobs.py). Sources (the cache tracker) are polled on
the same tick and contribute deltas of counters they read. Redis unreachable: the sums stay here and go
with the next flush that succeeds (logged once per outage), so an outage delays metrics, never loses them
while the process lives. After fork the child starts empty: the parent flushes what it had.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import redis

from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

log = logging.getLogger(__name__)

#: the most often a process writes its metrics to Redis (seconds)
FLUSH_INTERVAL_S = 1.0
#: distinct (key, field) pairs kept while Redis is unreachable; beyond it new fields are dropped and counted
MAX_PENDING_FIELDS = 50_000

Source = Callable[["MetricsBuffer"], None]


class MetricsBuffer:
    """Sums of increments per (Redis key, hash field), sent to Redis by a background thread."""

    def __init__(
        self,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        client_factory: Callable[[], redis.Redis] = shared_redis,
    ) -> None:
        self.interval_s = interval_s
        self._client_factory = client_factory
        self._sources: list[Source] = []
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._ints: dict[tuple[str, str], int] = {}
        self._floats: dict[tuple[str, str], float] = {}
        self._sets: dict[tuple[str, str], str] = {}
        self._expiries: dict[str, int] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._down = False
        #: increments dropped because too many fields were pending during an outage
        self.dropped = 0

    # --- recording (hot path: a dict update under a lock) ------------------------------------------------
    def incr(self, key: str, field: str, amount: int = 1) -> None:
        self._ensure_thread()
        with self._lock:
            if (key, field) in self._ints or self._room():
                self._ints[(key, field)] = self._ints.get((key, field), 0) + amount

    def incr_fields(self, key: str, fields: tuple[str, ...]) -> None:
        """Add one to each of ``fields`` of ``key`` under one lock (a per-job hot path)."""
        self._ensure_thread()
        with self._lock:
            for field in fields:
                if (key, field) in self._ints or self._room():
                    self._ints[(key, field)] = self._ints.get((key, field), 0) + 1

    def incr_float(self, key: str, field: str, amount: float) -> None:
        self._ensure_thread()
        with self._lock:
            if (key, field) in self._floats or self._room():
                self._floats[(key, field)] = self._floats.get((key, field), 0.0) + amount

    def set(self, key: str, field: str, value: str) -> None:
        """HSET on the next flush (the last value wins)."""
        self._ensure_thread()
        with self._lock:
            self._sets[(key, field)] = value

    def expire(self, key: str, seconds: int) -> None:
        """EXPIRE ``key`` on the next flush that writes anything (keys whose life is bounded, like the
        per-minute rollup; the caller sets it once per key, not per increment)."""
        with self._lock:
            self._expiries[key] = seconds

    def _room(self) -> bool:
        if len(self._ints) + len(self._floats) < MAX_PENDING_FIELDS:
            return True
        self.dropped += 1
        return False

    def add_source(self, source: Source) -> None:
        """Call ``source(buffer)`` before every flush (it adds what changed since its last call)."""
        self._sources.append(source)
        self._ensure_thread()

    def pending(self) -> int:
        with self._lock:
            return len(self._ints) + len(self._floats) + len(self._sets)

    # --- sending -----------------------------------------------------------------------------------------
    def flush(self) -> bool:
        """Send everything pending in one pipeline; False (and kept for later) if Redis is unreachable."""
        if os.getpid() != self._pid:
            self._reset()  # forked child: the parent owns (and flushes) what was pending before the fork
        for source in list(self._sources):
            try:
                source(self)
            except Exception:
                log.exception("metrics source %r failed", source)
        with self._lock:
            ints, self._ints = self._ints, {}
            floats, self._floats = self._floats, {}
            sets, self._sets = self._sets, {}
            expiries, self._expiries = self._expiries, {}
        if not (ints or floats or sets):
            return True
        try:
            pipe = self._client_factory().pipeline(transaction=False)
            for (key, field), n in ints.items():
                pipe.hincrby(key, field, n)
            for (key, field), x in floats.items():
                pipe.hincrbyfloat(key, field, x)
            for (key, field), value in sets.items():
                pipe.hset(key, field, value)
            for key, seconds in expiries.items():
                pipe.expire(key, seconds)
            pipe.execute()
        except (*REDIS_DOWN, redis.ReadOnlyError) as exc:
            self._merge_back(ints, floats, sets)
            with self._lock:
                for key, seconds in expiries.items():
                    self._expiries.setdefault(key, seconds)
            if not self._down:
                log.warning("metrics not sent: Redis unreachable (%s); keeping them in process", exc)
                self._down = True
            return False
        if self._down:
            log.warning("metrics sent again: Redis reachable")
            self._down = False
        return True

    def _merge_back(
        self, ints: dict[tuple[str, str], int], floats: dict[tuple[str, str], float], sets: dict[Any, str]
    ) -> None:
        with self._lock:
            for k, n in ints.items():
                self._ints[k] = self._ints.get(k, 0) + n
            for k, x in floats.items():
                self._floats[k] = self._floats.get(k, 0.0) + x
            for k, v in sets.items():
                self._sets.setdefault(k, v)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with _start_lock:
            if os.getpid() != self._pid:
                self._reset()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._wake.wait(self.interval_s):
            with contextlib.suppress(Exception):  # never let a metrics bug kill the flusher
                self.flush()

    def close(self) -> None:
        """Stop the thread after one last flush."""
        self._wake.set()
        self.flush()


_start_lock = threading.Lock()

#: the process-wide buffer every metric writer uses
BUFFER = MetricsBuffer()


def _reinit_after_fork() -> None:
    global _start_lock
    _start_lock = threading.Lock()
    BUFFER._reset()


os.register_at_fork(after_in_child=_reinit_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    with contextlib.suppress(Exception):  # best effort at exit: these are metrics, not state
        BUFFER.flush()
