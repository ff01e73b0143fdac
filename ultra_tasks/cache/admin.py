"""Operators' view of the result cache: what each shared level holds, and clearing it fleet-wide.

Per-process counters (hits, misses) live in each process (``DistributedCache.stats()``); what can be seen
from outside is the Redis level (keys and memory per namespace, the whole fleet) and the disk level of this
host. Clearing removes the Redis level's entries, this host's disk entries, and broadcasts an invalidation
that every running process applies to its memory level and its host's disk level. A host with no process
running then misses it: its disk entries last until their TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.cache.layered import DistributedCache
from ultra_tasks.config import Settings
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

#: keys looked at by one stats call at most (a huge cache is counted in part, and says so)
MAX_SCAN_KEYS = 100_000
#: keys per SCAN / MEMORY USAGE batch
BATCH = 1000


def cache_redis_url(settings: Settings) -> str:
    """The job cache's Redis level: CACHE_REDIS_URL, or REDIS_URL when that is unset."""
    return settings.cache_redis_url or settings.redis_url


def _where(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def redis_level_stats(client: redis.Redis, *, max_keys: int = MAX_SCAN_KEYS) -> dict[str, Any]:
    """Entries and bytes (MEMORY USAGE) per namespace in the Redis level; ``truncated`` past ``max_keys``."""
    prefix = keys.cache_prefix()
    namespaces: dict[str, dict[str, int]] = {}
    seen = 0
    truncated = False
    try:
        batch: list[str] = []

        def account(names: list[str]) -> None:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.memory_usage(name)
            for name, size in zip(names, pipe.execute(), strict=True):
                if size is None:  # expired between SCAN and MEMORY USAGE
                    continue
                namespace = name[len(prefix) :].split(":", 1)[0]
                row = namespaces.setdefault(namespace, {"keys": 0, "bytes": 0})
                row["keys"] += 1
                row["bytes"] += int(size)

        for raw in client.scan_iter(match=prefix + "*", count=BATCH):
            if seen >= max_keys:
                truncated = True
                break
            seen += 1
            batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            if len(batch) >= BATCH:
                account(batch)
                batch = []
        if batch:
            account(batch)
        used = client.info("memory").get("used_memory")
    except REDIS_DOWN as exc:
        raise DependencyUnavailableError("redis", f"{_where(client)}: {exc}") from exc
    return {
        "server": _where(client),
        "namespaces": dict(sorted(namespaces.items())),
        "keys": sum(r["keys"] for r in namespaces.values()),
        "bytes": sum(r["bytes"] for r in namespaces.values()),
        "truncated": truncated,
        "server_used_memory": int(used) if used is not None else None,
    }


def disk_level_stats(directory: Path) -> dict[str, Any]:
    """Entries per namespace and bytes of this host's disk level (nothing is created if it is absent)."""
    if not directory.is_dir():
        return {"directory": str(directory), "exists": False, "namespaces": {}, "entries": 0, "bytes": 0}
    from ultra_tasks.cache.disk import open_disk_cache

    namespaces: dict[str, int] = {}
    with open_disk_cache(directory) as cache:  # never unpickles a key someone else wrote
        for key in cache.iterkeys():
            if isinstance(key, str) and ":" in key:
                namespace = key.split(":", 1)[0]
                namespaces[namespace] = namespaces.get(namespace, 0) + 1
        volume = int(cache.volume())
    return {
        "directory": str(directory),
        "exists": True,
        "namespaces": dict(sorted(namespaces.items())),
        "entries": sum(namespaces.values()),
        "bytes": volume,
    }


@dataclass(frozen=True)
class Cleared:
    namespaces: list[str]
    redis_removed: int
    disk_removed: int


def clear_cache(settings: Settings, namespace: str | None = None) -> Cleared:
    """Remove ``namespace`` (default: every namespace found, and the job cache's) from the Redis level and
    this host's disk level, and tell every process to drop it from its memory level.

    Redis unreachable: ``DependencyUnavailableError`` and nothing is cleared (other hosts' disk levels and
    every memory level could not be told).
    """
    from ultra_tasks.cache.llm import NAMESPACE as JOB_NAMESPACE

    url = cache_redis_url(settings)
    client = shared_redis(url)
    try:
        client.ping()
    except REDIS_DOWN as exc:
        raise DependencyUnavailableError("redis", f"{_where(client)}: {exc}; nothing was cleared") from exc
    directory = settings.effective_cache_disk_dir
    disk_before = disk_level_stats(directory)["namespaces"]
    if namespace is None:
        names = sorted(set(redis_level_stats(client)["namespaces"]) | set(disk_before) | {JOB_NAMESPACE})
    else:
        names = [namespace]
    cache = DistributedCache(
        memory_cache_size=1,
        disk_cache_dir=directory if directory.is_dir() else None,
        redis_url=url,
        listen_for_invalidations=False,
    )
    redis_removed = 0
    try:
        for name in names:  # a malformed namespace raises CacheValueError before anything is removed
            redis_removed += cache.invalidate_namespace_sync(name)
        if cache.redis is not None and cache.redis.stats.errors:
            raise DependencyUnavailableError(
                "redis", f"{_where(client)} failed while clearing; some of {names} may remain"
            )
    finally:
        cache.close()
    disk_after = disk_level_stats(directory)["namespaces"]
    disk_removed = sum(disk_before.get(n, 0) - disk_after.get(n, 0) for n in names)
    return Cleared(names, redis_removed, max(0, disk_removed))
