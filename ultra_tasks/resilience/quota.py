"""Providers whose quota is exhausted are skipped, fleet-wide, until the reset they stated (or a cool-down).

A quota error is never retried. The mark lives in Redis with an expiry; each process also remembers it
locally, and re-reads Redis at most once a second per provider.
"""

from __future__ import annotations

import contextlib
import threading
import time

import redis

from ultra_tasks import keys
from ultra_tasks.redis_client import REDIS_DOWN as DOWN

#: seconds a process trusts its view of a provider's quota before asking Redis again
REFRESH_S = 1.0


class QuotaGuard:
    def __init__(self, client: redis.Redis, cooldown_s: float) -> None:
        self.client = client
        self.cooldown_s = cooldown_s
        self._view: dict[str, tuple[float, float]] = {}  # provider -> (blocked until (monotonic), checked at)
        self._lock = threading.Lock()

    def mark_exhausted(self, provider: str, reset_after: float | None, reason: str) -> float:
        """Skip ``provider`` for ``reset_after`` seconds (or the cool-down); returns the seconds chosen."""
        seconds = reset_after if reset_after and reset_after > 0 else self.cooldown_s
        now = time.monotonic()
        with self._lock:
            self._view[provider] = (now + seconds, now)
        # Redis down: this process still skips it; the others learn from their own quota errors
        with contextlib.suppress(*DOWN):
            self.client.set(keys.provider_unavailable(provider), reason[:500], px=max(1, int(seconds * 1000)))
        return seconds

    def blocked_for(self, provider: str) -> float:
        """Seconds until ``provider`` may be called again (0: now)."""
        now = time.monotonic()
        until, checked = self._view.get(provider, (0.0, -REFRESH_S))
        if now - checked >= REFRESH_S:
            try:
                ttl_ms = int(self.client.pttl(keys.provider_unavailable(provider)))
                until = now + ttl_ms / 1000 if ttl_ms > 0 else 0.0
            except DOWN:
                pass
            with self._lock:
                self._view[provider] = (until, now)
        return max(0.0, until - now)

    def clear(self, provider: str) -> None:
        with self._lock:
            self._view.pop(provider, None)
        self.client.delete(keys.provider_unavailable(provider))
