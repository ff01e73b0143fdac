"""Adaptive timeouts from the fleet's latency history per provider and model, kept in Redis.

timeout = clamp(percentile(recent latencies) x factor, min, max); the configured default until enough
history exists. Latencies are sent in batches and the timeout recomputed at most once per refresh
interval, so a call costs no extra Redis round trip. A call that timed out counts as a sample at the
timeout it was given: otherwise rising latencies would leave only fast samples and the timeout could
never grow to meet them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis

from ultra_tasks import keys
from ultra_tasks.config import Settings
from ultra_tasks.model_names import tracked_model
from ultra_tasks.redis_client import REDIS_DOWN as DOWN

#: how many recent latencies the fleet keeps per provider and model
HISTORY = 200
#: seconds between flushes of this process's latencies and recomputations of the timeout
REFRESH_S = 1.0
#: seconds a model's latency history outlives its last sample
HISTORY_TTL_S = 7 * 24 * 3600


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class _Entry:
    timeout: float
    refreshed: float = 0.0
    pending: list[float] = field(default_factory=list)
    samples: int = 0


class AdaptiveTimeouts:
    def __init__(self, client: redis.Redis, settings: Settings, refresh_s: float = REFRESH_S) -> None:
        self.client = client
        self.settings = settings
        self.refresh_s = refresh_s
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()

    def timeout(self, provider: str, model: str) -> float:
        """Seconds to allow the next call to ``provider``/``model``."""
        entry = self._entry(provider, model)
        if time.monotonic() - entry.refreshed >= self.refresh_s:
            self._refresh(provider, model, entry)
        return entry.timeout

    def record(self, provider: str, model: str, latency_s: float) -> None:
        entry = self._entry(provider, model)
        with self._lock:
            entry.pending.append(latency_s)

    def _entry(self, provider: str, model: str) -> _Entry:
        model = tracked_model(model)  # bounded: names beyond the fleet's cap share one entry
        entry = self._entries.get((provider, model))
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault((provider, model), _Entry(self.settings.provider_timeout))
        return entry

    def _refresh(self, provider: str, model: str, entry: _Entry) -> None:
        with self._lock:
            pending, entry.pending = entry.pending, []
            entry.refreshed = time.monotonic()
        name = keys.latencies(provider, tracked_model(model))
        try:
            pipe = self.client.pipeline()
            if pending:
                pipe.lpush(name, *[f"{x:.4f}" for x in pending])
                pipe.ltrim(name, 0, HISTORY - 1)
                pipe.expire(name, HISTORY_TTL_S)
            pipe.lrange(name, 0, HISTORY - 1)
            history = [float(x) for x in pipe.execute()[-1]]
        except DOWN:
            return  # keep the last timeout; the history waits for Redis
        s = self.settings
        entry.samples = len(history)
        if len(history) < s.adaptive_timeout_min_samples:
            entry.timeout = s.provider_timeout
            return
        raw = percentile(history, s.adaptive_timeout_percentile) * s.adaptive_timeout_factor
        entry.timeout = min(s.adaptive_timeout_max, max(s.adaptive_timeout_min, raw))
