"""Level 3: Redis, shared by the whole fleet. Unreachable Redis degrades the cache, never the caller."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.cache.base import MISS, CorruptEntry, LevelStats, decode
from ultra_tasks.redis_client import REDIS_DOWN as DOWN

log = logging.getLogger(__name__)

#: seconds an unreachable Redis level is skipped before it is tried again
RETRY_AFTER_S = 1.0
#: the longest an entry lives in Redis (seconds), also one put with no TTL: the fleet's Redis runs with
#: noeviction, so an entry that never expires would hold memory the queues need until someone clears it
MAX_TTL_S = 30 * 24 * 3600


class RedisCache:
    def __init__(self, client: redis.Redis, max_ttl_s: float = MAX_TTL_S) -> None:
        self.client = client
        self.max_ttl_s = max_ttl_s
        self.stats = LevelStats()
        self._down_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self.available():
            log.warning("Redis cache level unreachable (%s); serving from memory and disk", exc)
        self._down_until = time.monotonic() + RETRY_AFTER_S
        self.stats.count("errors")

    def get(self, namespace: str, key: str) -> tuple[Any, float | None, str | bytes | None]:
        """(value, expires_at, stored form) or (MISS, None, None)."""
        if not self.available():
            return MISS, None, None
        started = time.perf_counter()
        name = keys.cache_entry(namespace, key)
        try:
            raw = self.client.get(name)
        except DOWN as exc:
            self._failed(exc)
            return MISS, None, None
        if raw is None:
            self.stats.read(False, time.perf_counter() - started)
            return MISS, None, None
        try:
            value, expires = decode(raw)
        except CorruptEntry:
            self.stats.count("corrupt")
            self.delete(namespace, key)
            self.stats.read(False, time.perf_counter() - started)
            return MISS, None, None
        self.stats.read(True, time.perf_counter() - started)
        return value, expires, raw

    def put(self, namespace: str, key: str, raw: str, ttl_seconds: float | None) -> None:
        if not self.available():
            return
        ttl = min(ttl_seconds, self.max_ttl_s) if ttl_seconds else self.max_ttl_s
        try:
            self.client.set(keys.cache_entry(namespace, key), raw, px=max(1, int(ttl * 1000)))
        except DOWN as exc:
            self._failed(exc)

    def delete(self, namespace: str, key: str) -> None:
        try:
            self.client.delete(keys.cache_entry(namespace, key))
        except DOWN as exc:
            self._failed(exc)

    def delete_namespace(self, namespace: str) -> int:
        deleted = 0
        try:
            batch: list[Any] = []
            for name in self.client.scan_iter(match=keys.cache_namespace_prefix(namespace) + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    deleted += int(self.client.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(self.client.unlink(*batch))
        except DOWN as exc:
            self._failed(exc)
        return deleted

    def publish(self, channel: str, message: str) -> None:
        try:
            self.client.publish(channel, message)
        except DOWN as exc:
            self._failed(exc)
