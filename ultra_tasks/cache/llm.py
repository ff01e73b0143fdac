"""The job path's use of the cache: stable request digests, what may be cached, and one fill per key.

The key is a SHA-256 of the normalized request (model, messages and every parameter that changes the
answer), identical in every process and on every machine; never ``hash()``, which differs per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
import uuid
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.cache.layered import DistributedCache
from ultra_tasks.config import Settings
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.redis_client import REDIS_DOWN as DOWN

log = logging.getLogger(__name__)

NAMESPACE = "llm"
#: bump when the digest's inputs change, so old entries are never mistaken for new ones
KEY_VERSION = "v1"
#: how often a job waiting for an identical job's answer looks for it (seconds, with jitter)
WAIT_POLL_S = 0.05


def request_digest(request: LLMRequest) -> str:
    canonical = json.dumps(
        {
            "v": KEY_VERSION,
            "model": request.model,
            "messages": [[m.role, m.content] for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "params": request.params,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_cacheable(request: LLMRequest, payload: dict[str, Any], settings: Settings) -> bool:
    """Cache only deterministic requests by default; a job may opt out with ``cache=False``."""
    if not settings.cache_enabled or payload.get("cache") is False:
        return False
    return settings.cache_nondeterministic or request.temperature == 0


def job_cache(settings: Settings) -> DistributedCache:
    """The job path's cache, as the settings describe it (one per process: runtime.py holds it)."""
    return DistributedCache(
        memory_cache_size=settings.cache_memory_size,
        disk_cache_dir=settings.effective_cache_disk_dir,
        redis_url=settings.cache_redis_url or settings.redis_url,
        default_ttl=settings.cache_default_ttl,
        redis_max_ttl=settings.cache_redis_max_ttl,
    )


class FillLock:
    """At most one worker computes a missing entry; identical jobs wait (bounded) and share its answer."""

    def __init__(self, cache: DistributedCache, digest: str, lease_s: float) -> None:
        self.cache = cache
        self.digest = digest
        self.lease_ms = max(1, int(lease_s * 1000))
        self.token = uuid.uuid4().hex
        self.name = keys.cache_fill_lock(NAMESPACE, digest)
        self.held = False

    def _client(self) -> redis.Redis | None:
        return self.cache.redis.client if self.cache.redis is not None else None

    def acquire(self) -> bool:
        """True if we are the one to compute it (also when Redis is unreachable: then nobody coordinates)."""
        client = self._client()
        if client is None:
            return True
        try:
            self.held = bool(client.set(self.name, self.token, nx=True, px=self.lease_ms))
        except DOWN:
            return True
        return self.held

    def wait_for_value(self, timeout: float) -> Any:
        """The value another worker stored, or None after ``timeout`` seconds (or once its lock is gone)."""
        deadline = time.monotonic() + timeout
        client = self._client()
        while time.monotonic() < deadline:
            value = self.cache.get_sync(self.digest, NAMESPACE)
            if value is not None:
                return value
            try:
                if client is not None and not client.exists(self.name):
                    # the filler finished or died without storing: one last look, then go ahead
                    return self.cache.get_sync(self.digest, NAMESPACE)
            except DOWN:
                return None
            time.sleep(WAIT_POLL_S * (0.5 + random.random()))
        return None

    def release(self) -> None:
        client = self._client()
        if not self.held or client is None:
            return
        # only our own lock, atomically: after a lease expiry another worker may hold it
        with contextlib.suppress(*DOWN):
            client.eval(_RELEASE_LUA, 1, self.name, self.token)
        self.held = False


_RELEASE_LUA = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
