"""Level 2: on disk, shared by the processes of one machine, through the well-kept ``diskcache`` library.

A directory that cannot be written (or a full disk) disables the level for a while instead of failing
the caller; each such event is counted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import diskcache  # imported here: a missing dependency must fail loudly, not look like a broken disk

from ultra_tasks.cache.base import MISS, CorruptEntry, LevelStats, decode

log = logging.getLogger(__name__)

#: seconds a failing disk level is skipped before it is tried again
RETRY_AFTER_S = 30.0


class DiskCache:
    def __init__(self, directory: str | Path, size_limit_bytes: int = 1 << 30) -> None:
        self.directory = Path(directory)
        self.size_limit_bytes = size_limit_bytes
        self.stats = LevelStats()
        self._cache: Any = None
        self._down_until = 0.0

    def _open(self) -> Any:
        if self._cache is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=self.size_limit_bytes)
        return self._cache

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self.available():
            log.warning(
                "disk cache %s unusable (%s); skipping it for %.0fs", self.directory, exc, RETRY_AFTER_S
            )
        self._down_until = time.monotonic() + RETRY_AFTER_S
        self.stats.count("errors")

    def get(self, key: str) -> tuple[Any, float | None, str | None]:
        """(value, expires_at, stored form) or (MISS, None, None)."""
        if not self.available():
            return MISS, None, None
        started = time.perf_counter()
        try:
            raw = self._open().get(key, default=None)
        except Exception as exc:  # sqlite3 / OS errors from a broken or vanished directory
            self._failed(exc)
            return MISS, None, None
        if raw is None:
            self.stats.read(False, time.perf_counter() - started)
            return MISS, None, None
        try:
            value, expires = decode(raw)
        except CorruptEntry:
            self.stats.count("corrupt")
            self.delete(key)
            self.stats.read(False, time.perf_counter() - started)
            return MISS, None, None
        self.stats.read(True, time.perf_counter() - started)
        return value, expires, raw

    def put(self, key: str, raw: str, ttl_seconds: float | None) -> None:
        if not self.available():
            return
        try:
            self._open().set(key, raw, expire=ttl_seconds)
        except Exception as exc:
            self._failed(exc)

    def delete(self, key: str) -> None:
        if not self.available():
            return
        try:
            self._open().delete(key)
        except Exception as exc:
            self._failed(exc)

    def delete_prefix(self, prefix: str) -> int:
        if not self.available():
            return 0
        try:
            cache = self._open()
            doomed = [k for k in cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]
            for k in doomed:
                cache.delete(k)
            return len(doomed)
        except Exception as exc:
            self._failed(exc)
            return 0

    def size(self) -> int:
        try:
            return len(self._open()) if self.available() else 0
        except Exception:
            return 0

    def volume_bytes(self) -> int:
        try:
            return int(self._open().volume()) if self.available() else 0
        except Exception:
            return 0

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
