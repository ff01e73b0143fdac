"""Level 2: on disk, shared by the processes of one machine, through the well-kept ``diskcache`` library.

A directory that cannot be written (or a full disk) disables the level for a while instead of failing
the caller; each such event is counted.

JSON text only, never pickle: diskcache's default ``Disk`` pickles any value or key that is not a str,
bytes, int or float, and unpickles such a row when it is read, so anyone who can write the cache
directory could run code in every process that reads it. ``JsonOnlyDisk`` stores str and bytes only and
never unpickles: a pickled row reads as ``UnsafeEntry`` (a corrupt entry: a miss, counted and removed),
a pickled key as its raw bytes (never one of our keys).
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


class UnsafeEntry(CorruptEntry):
    """A disk cache row stored as a pickle: not ours, and never unpickled."""


class JsonOnlyDisk(diskcache.Disk):
    """diskcache's serialization with pickle taken out: str and bytes are stored raw (or as files), as
    diskcache stores them anyway; anything else is refused on write, and a pickled row or key is never
    loaded on read."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) not in (str, bytes):
            raise TypeError(f"disk cache keys are str or bytes (never pickled), got {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            # a pickled key (written by someone else): its bytes, which match none of our str keys
            return bytes(key)
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> tuple[int, int, Any, Any]:
        if read or type(value) not in (str, bytes):
            kind = type(value).__name__
            raise TypeError(f"the disk cache stores JSON text only, never pickles: got {kind}")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise UnsafeEntry("a pickled row (never unpickled)")
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT):
            raise UnsafeEntry(f"a row in unknown mode {mode!r}")
        return super().fetch(mode, filename, value, read)


def open_disk_cache(directory: str | Path, **settings: Any) -> Any:
    """A ``diskcache.Cache`` on ``directory`` that never pickles nor unpickles (every opener uses this)."""
    return diskcache.Cache(str(directory), disk=JsonOnlyDisk, **settings)


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
            self._cache = open_disk_cache(self.directory, size_limit=self.size_limit_bytes)
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
            if raw is None:
                self.stats.read(False, time.perf_counter() - started)
                return MISS, None, None
            value, expires = decode(raw)
        except CorruptEntry as exc:  # not ours: a pickled row, malformed JSON, the wrong shape
            log.warning("disk cache %s: entry %r is not ours (%s); removed", self.directory, key, exc)
            self.stats.count("corrupt")
            self.delete(key)
            self.stats.read(False, time.perf_counter() - started)
            return MISS, None, None
        except Exception as exc:  # sqlite3 / OS errors from a broken or vanished directory
            self._failed(exc)
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
