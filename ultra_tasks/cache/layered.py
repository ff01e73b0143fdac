"""``DistributedCache``: memory → disk → Redis, read-through with promotion, write-through.

Values are JSON. An entry that cannot be decoded on any level is a miss and is removed. A level that fails
(Redis unreachable, disk unwritable or full) is skipped for a while and counted; the caller still gets an
answer from the other levels. Invalidations reach every listening process's memory level, and its host's
disk level, through a Redis channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.cache.base import MISS, encode, remaining_ttl
from ultra_tasks.cache.disk import DiskCache
from ultra_tasks.cache.memory import MemoryCache
from ultra_tasks.cache.redis_level import MAX_TTL_S as REDIS_MAX_TTL_S
from ultra_tasks.cache.redis_level import RedisCache
from ultra_tasks.errors import UltraTasksError
from ultra_tasks.metrics.cache import track_cache
from ultra_tasks.redis_client import REDIS_DOWN as DOWN

log = logging.getLogger(__name__)

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: namespaces already checked (a hot path: every get builds a key)
_VALID_NAMESPACES: set[str] = set()
#: seconds between reconnection attempts of the invalidation listener
LISTEN_RETRY_S = 1.0


class CacheValueError(UltraTasksError, ValueError):
    """A value that cannot be cached (not JSON) or a malformed namespace/key."""


class DistributedCache:
    """Multi-level cache. ``get``/``put``/``invalidate`` are async; ``*_sync`` twins do the same in threads.

    ``disk_cache_dir=None`` or ``redis_url=None`` leave that level out. An entry lives at most
    ``redis_max_ttl`` seconds in Redis, also one put with no TTL (``ttl_seconds=0``, or a ``default_ttl``
    of 0 or None), so the shared level never holds memory for good.
    """

    def __init__(
        self,
        memory_cache_size: int = 1000,
        disk_cache_dir: str | Path | None = None,
        redis_url: str | None = None,
        *,
        default_ttl: float | None = 3600,
        redis_max_ttl: float = REDIS_MAX_TTL_S,
        redis_client: redis.Redis | None = None,
        listen_for_invalidations: bool = True,
    ) -> None:
        self.default_ttl = default_ttl
        self.memory = MemoryCache(memory_cache_size)
        self.disk = DiskCache(disk_cache_dir) if disk_cache_dir else None
        if redis_client is None and redis_url:
            redis_client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.redis = RedisCache(redis_client, redis_max_ttl) if redis_client is not None else None
        self._origin = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        track_cache(self)  # fleet-wide hit/miss counts, read from self's counters by a background thread
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        if self.redis is not None and listen_for_invalidations:
            self._listener = threading.Thread(target=self._listen, name="cache-invalidations", daemon=True)
            self._listener.start()

    # --- sync API -----------------------------------------------------------------------------------------
    def get_sync(self, key: str, namespace: str = "default", default: Any = None) -> Any:
        """The cached value, or ``default`` if no level has it."""
        full = self._full_key(namespace, key)
        value = self.memory.get(full)
        if value is not MISS:
            return value
        value = self._get_lower(namespace, key, full)
        return default if value is MISS else value

    def put_sync(
        self, key: str, value: Any, namespace: str = "default", ttl_seconds: float | None = None
    ) -> None:
        full = self._full_key(namespace, key)
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds
        try:
            raw = encode(value, ttl)
        except (TypeError, ValueError) as exc:
            raise CacheValueError(f"value for {namespace}/{key} is not JSON-serializable: {exc}") from None
        expires = None if not ttl else time.time() + ttl
        self.memory.put(full, raw, expires)
        if self.disk is not None:
            self.disk.put(full, raw, ttl)
        if self.redis is not None:
            self.redis.put(namespace, key, raw, ttl)

    def invalidate_sync(self, key: str, namespace: str = "default") -> None:
        """Remove one entry from every level here, and from every process's memory level."""
        full = self._full_key(namespace, key)
        self.memory.delete(full)
        self.memory.stats.count("invalidations")
        if self.disk is not None:
            self.disk.delete(full)
        if self.redis is not None:
            self.redis.delete(namespace, key)
            self._broadcast(namespace, key)

    def invalidate_namespace_sync(self, namespace: str) -> int:
        """Remove a whole namespace, everywhere. Returns the number of Redis entries removed."""
        prefix = self._full_key(namespace, "")
        self.memory.delete_prefix(prefix)
        self.memory.stats.count("invalidations")
        if self.disk is not None:
            self.disk.delete_prefix(prefix)
        removed = 0
        if self.redis is not None:
            removed = self.redis.delete_namespace(namespace)
            self._broadcast(namespace, None)
        return removed

    # --- async API ----------------------------------------------------------------------------------------
    async def get(self, key: str, namespace: str = "default", default: Any = None) -> Any:
        full = self._full_key(namespace, key)
        value = self.memory.get(full)  # in-process: no thread hop on a memory hit
        if value is not MISS:
            return value
        if self.disk is None and self.redis is None:
            return default
        value = await asyncio.to_thread(self._get_lower, namespace, key, full)
        return default if value is MISS else value

    async def put(
        self, key: str, value: Any, namespace: str = "default", ttl_seconds: float | None = None
    ) -> None:
        await asyncio.to_thread(self.put_sync, key, value, namespace, ttl_seconds)

    async def invalidate(self, key: str, namespace: str = "default") -> None:
        await asyncio.to_thread(self.invalidate_sync, key, namespace)

    async def invalidate_namespace(self, namespace: str) -> int:
        return await asyncio.to_thread(self.invalidate_namespace_sync, namespace)

    # --- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _full_key(namespace: str, key: str) -> str:
        if namespace not in _VALID_NAMESPACES:
            if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
                raise CacheValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
            _VALID_NAMESPACES.add(namespace)
        if not isinstance(key, str):
            raise CacheValueError(f"key must be a string, got {type(key).__name__}")
        return f"{namespace}:{key}"

    def _get_lower(self, namespace: str, key: str, full: str) -> Any:
        """Disk, then Redis; promote a hit to the faster levels with the remaining TTL."""
        if self.disk is not None:
            value, expires, raw = self.disk.get(full)
            if value is not MISS:
                self._promote(full, raw, expires, to_disk=False)
                return value
        if self.redis is not None:
            value, expires, stored = self.redis.get(namespace, key)
            if value is not MISS:
                self._promote(full, stored, expires, to_disk=True)
                return value
        return MISS

    def _promote(self, full: str, raw: Any, expires: float | None, *, to_disk: bool) -> None:
        """Copy a lower level's entry up as it is: its envelope carries the absolute expiry."""
        if self.memory.max_size <= 0 and (not to_disk or self.disk is None):
            return
        ttl = remaining_ttl(expires)
        if ttl is not None and ttl <= 0:
            return
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        self.memory.put(full, text, expires)
        if to_disk and self.disk is not None:
            self.disk.put(full, text, ttl)

    def _broadcast(self, namespace: str, key: str | None) -> None:
        assert self.redis is not None
        message = json.dumps({"namespace": namespace, "key": key, "origin": self._origin})
        self.redis.publish(keys.cache_invalidations(), message)

    def _apply_invalidation(self, message: dict[str, Any]) -> None:
        namespace, key = message.get("namespace"), message.get("key")
        if not isinstance(namespace, str) or message.get("origin") == self._origin:
            return
        if key is None:
            self.memory.delete_prefix(f"{namespace}:")
        else:
            self.memory.delete(f"{namespace}:{key}")
        self.memory.stats.count("invalidations")
        # The sender cleared its own host's disk level; this process may be on another host, whose disk
        # level would otherwise keep serving (and promoting back up) what was invalidated until its TTL.
        # On the sender's host this deletes nothing more: diskcache makes that safe from any process.
        if self.disk is not None:
            if key is None:
                self.disk.delete_prefix(f"{namespace}:")
            else:
                self.disk.delete(f"{namespace}:{key}")

    def _listen(self) -> None:
        """Apply other processes' invalidations to this memory level; survive Redis going away."""
        assert self.redis is not None
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.redis.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.cache_invalidations())
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message.get("type") == "message":
                        try:
                            self._apply_invalidation(json.loads(message["data"]))
                        except ValueError:
                            log.warning("ignoring a malformed cache invalidation message")
            except DOWN:
                # Invalidations sent while we are disconnected are missed; entries still expire by their TTL.
                self._stop.wait(LISTEN_RETRY_S)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def stats(self) -> dict[str, Any]:
        """Per level: hits, misses, errors, corrupt entries, invalidations, average read time, sizes."""
        out: dict[str, Any] = {
            "memory": {
                **self.memory.stats.as_dict(),
                "size": self.memory.size(),
                "capacity": self.memory.max_size,
                "utilization": self.memory.size() / self.memory.max_size if self.memory.max_size else None,
            },
        }
        if self.disk is not None:
            out["disk"] = {
                **self.disk.stats.as_dict(),
                "size": self.disk.size(),
                "bytes": self.disk.volume_bytes(),
                "capacity_bytes": self.disk.size_limit_bytes,
                "available": self.disk.available(),
            }
        if self.redis is not None:
            out["redis"] = {**self.redis.stats.as_dict(), "available": self.redis.available()}
        return out

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(2)
        if self.disk is not None:
            self.disk.close()
