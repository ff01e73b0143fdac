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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value we write")


#: strict JSON: what ``encode`` writes, nothing else
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def decode(raw: str | bytes) -> tuple[Any, float | None]:
    """(value, expires_at) from the stored form; CorruptEntry if it is not JSON or not our envelope
    (an object of exactly ``v`` and ``e``, ``e`` a number or null). Only JSON is ever parsed here."""
    if not isinstance(raw, (str, bytes)):
        raise CorruptEntry(f"stored as {type(raw).__name__}, not JSON text")
    try:
        data = _DECODER.decode(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as exc:  # also UnicodeDecodeError, and NaN/Infinity (never written: allow_nan=False)
        raise CorruptEntry(str(exc)) from None
    if not isinstance(data, dict) or data.keys() != {"v", "e"}:
        raise CorruptEntry("not a cache envelope")
    expires = data["e"]
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, (int, float))):
        raise CorruptEntry(f"expiry {expires!r} is not a number")
    return data["v"], expires


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
