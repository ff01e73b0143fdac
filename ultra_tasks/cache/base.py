"""What every cache level shares: JSON envelopes with an absolute expiry, and per-level statistics."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: sentinel for "not in this level" (None is a valid cached value)
MISS: Any = object()


def encode(value: Any, ttl_seconds: float | None) -> str:
    """JSON with the absolute expiry (epoch seconds), so a promotion keeps the remaining TTL."""
    expires = None if not ttl_seconds else time.time() + ttl_seconds
    return json.dumps({"v": value, "e": expires}, separators=(",", ":"), allow_nan=False)


class CorruptEntry(ValueError):
    """A stored entry that cannot be decoded: treated as a miss and removed."""


def decode(raw: str | bytes) -> tuple[Any, float | None]:
    """(value, expires_at) from the stored form; CorruptEntry if it is not ours or not JSON."""
    try:
        data = json.loads(raw)
        return data["v"], data["e"]
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptEntry(str(exc)) from None


def remaining_ttl(expires_at: float | None) -> float | None:
    """Seconds left (None: no expiry); <= 0 means expired."""
    return None if expires_at is None else expires_at - time.time()


@dataclass
class LevelStats:
    """Counters of one level in this process."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    invalidations: int = 0
    read_seconds: float = 0.0
    reads: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, hit: bool, seconds: float) -> None:
        with self._lock:
            self.reads += 1
            self.read_seconds += seconds
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / self.reads if self.reads else None,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "invalidations": self.invalidations,
            "avg_read_us": self.read_seconds / self.reads * 1e6 if self.reads else None,
        }
