"""Level 1: an in-process LRU with TTL. Holds the encoded JSON text (never objects or pickles), so callers
can never mutate a cached value."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from ultra_tasks.cache.base import MISS, CorruptEntry, LevelStats, decode


class MemoryCache:
    def __init__(self, max_size: int = 1000) -> None:
        self.max_size = max_size
        self._data: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = LevelStats()

    def get(self, key: str) -> Any:
        started = time.perf_counter()
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                raw, expires = entry
                if expires is not None and expires <= time.time():
                    del self._data[key]
                    entry = None
                else:
                    self._data.move_to_end(key)
        if entry is None:
            self.stats.read(False, time.perf_counter() - started)
            return MISS
        try:
            value = decode(raw)[0]
        except CorruptEntry:  # only what we encoded or decoded from a lower level gets here
            self.stats.count("corrupt")
            self.delete(key)
            self.stats.read(False, time.perf_counter() - started)
            return MISS
        self.stats.read(True, time.perf_counter() - started)
        return value

    def put(self, key: str, raw: str, expires_at: float | None) -> None:
        if self.max_size <= 0:
            return
        with self._lock:
            self._data[key] = (raw, expires_at)
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith(prefix)]
            for k in doomed:
                del self._data[k]
        return len(doomed)

    def size(self) -> int:
        return len(self._data)
