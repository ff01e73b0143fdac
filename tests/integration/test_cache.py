"""The multi-level cache against real Redis, a real disk and separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer

from ultra_tasks import DistributedCache
from ultra_tasks.cache import CacheValueError
from ultra_tasks.cache.base import MISS
from ultra_tasks.keys import cache_entry

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client")]


def _ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def caches(tmp_path: Path) -> Any:
    made: list[DistributedCache] = []

    def make(memory: int = 100, disk: bool = True, redis_level: bool = True, **kw: Any) -> DistributedCache:
        cache = DistributedCache(
            memory_cache_size=memory,
            disk_cache_dir=tmp_path / "disk" if disk else None,
            redis_url=os.environ["REDIS_URL"] if redis_level else None,
            **kw,
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


async def test_seed_usage_get_put_with_namespace_and_ttl(caches: Any) -> None:
    cache = caches()
    ns = _ns()
    assert await cache.get("gpt-4o:prompt", ns) is None
    await cache.put("gpt-4o:prompt", {"text": "hi", "n": 1}, ns, ttl_seconds=3600)
    assert await cache.get("gpt-4o:prompt", ns) == {"text": "hi", "n": 1}


def test_an_entry_put_with_no_ttl_or_a_longer_one_still_expires_in_redis_within_its_ceiling(
    caches: Any, redis_client: Any
) -> None:
    # Redis runs with noeviction: an entry kept for good there would hold the queues' memory
    cache = caches(memory=0, disk=False, default_ttl=0, redis_max_ttl=120)
    ns = _ns()
    cache.put_sync("no-ttl", "v", ns, ttl_seconds=0)
    cache.put_sync("default-ttl-0", "v", ns)
    cache.put_sync("a-year", "v", ns, ttl_seconds=365 * 24 * 3600)
    cache.put_sync("a-minute", "v", ns, ttl_seconds=60)
    names = ("no-ttl", "default-ttl-0", "a-year", "a-minute")
    ttls = {k: redis_client.ttl(cache_entry(ns, k)) for k in names}
    assert all(0 < ttl <= 120 for ttl in ttls.values()), ttls
    assert ttls["a-minute"] <= 60
    assert cache.get_sync("no-ttl", ns) == "v"


@pytest.mark.parametrize("level", ["memory", "disk", "redis"])
def test_entries_expire_on_each_level(caches: Any, level: str) -> None:
    cache = caches(memory=100 if level == "memory" else 0, disk=level == "disk", redis_level=level == "redis")
    ns = _ns()
    cache.put_sync("k", "v", ns, ttl_seconds=0.3)
    assert cache.get_sync("k", ns) == "v"
    time.sleep(0.45)
    assert cache.get_sync("k", ns) is None


def test_read_through_promotes_to_faster_levels_with_remaining_ttl(caches: Any) -> None:
    ns = _ns()
    caches().put_sync("k", [1, 2], ns, ttl_seconds=60)
    # a fresh process view: empty memory; same disk and Redis
    reader = caches(disk=False)
    assert reader.memory.get(f"{ns}:k") is MISS
    assert reader.get_sync("k", ns) == [1, 2]  # from Redis
    assert reader.memory.get(f"{ns}:k") == [1, 2]  # promoted
    stats = reader.stats()
    assert stats["redis"]["hits"] == 1 and stats["memory"]["hits"] == 1
    expires = reader.memory._data[f"{ns}:k"][1]
    assert expires is not None and 55 < expires - time.time() <= 60


def test_values_must_be_json_and_namespaces_well_formed(caches: Any) -> None:
    cache = caches()
    with pytest.raises(CacheValueError, match="not JSON-serializable"):
        cache.put_sync("k", {1, 2}, _ns())
    with pytest.raises(CacheValueError, match="namespace"):
        cache.put_sync("k", 1, "bad:namespace")


def test_corrupt_disk_and_redis_entries_are_misses_and_are_removed(caches: Any, redis_client: Any) -> None:
    ns = _ns()
    cache = caches(memory=0)
    cache.put_sync("k", "good", ns)
    cache.disk._open().set(f"{ns}:k", "{not json")  # type: ignore[union-attr]
    redis_client.set(cache_entry(ns, "k"), b"\x80\x81 garbage")
    assert cache.get_sync("k", ns) is None
    assert cache.stats()["disk"]["corrupt"] == 1 and cache.stats()["redis"]["corrupt"] == 1
    assert redis_client.exists(cache_entry(ns, "k")) == 0
    assert cache.disk._open().get(f"{ns}:k") is None  # type: ignore[union-attr]


def test_unwritable_disk_level_is_skipped_and_counted(caches: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    cache = DistributedCache(
        memory_cache_size=0, disk_cache_dir=blocker / "cache", redis_url=os.environ["REDIS_URL"]
    )
    try:
        ns = _ns()
        cache.put_sync("k", "still cached in Redis", ns)
        assert cache.get_sync("k", ns) == "still cached in Redis"
        assert cache.stats()["disk"]["errors"] >= 1 and cache.stats()["disk"]["available"] is False
    finally:
        cache.close()


def test_redis_stopped_cache_still_serves_from_memory_and_disk(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    ns = _ns()
    a = DistributedCache(memory_cache_size=10, disk_cache_dir=tmp_path / "d", redis_url=private_redis.url)
    b = DistributedCache(memory_cache_size=10, disk_cache_dir=tmp_path / "d", redis_url=private_redis.url)
    try:
        a.put_sync("k", "v", ns)
        private_redis.stop()
        assert a.get_sync("k", ns) == "v"  # memory
        assert b.get_sync("k", ns) == "v"  # disk (b never saw it in memory)
        a.put_sync("k2", "v2", ns)  # writes survive on the levels that work
        assert a.get_sync("k2", ns) == "v2"
        assert a.get_sync("missing", ns) is None
        assert a.stats()["redis"]["errors"] >= 1
    finally:
        a.close()
        b.close()


CHILD = """
import json, sys, time, redis, os
from ultra_tasks import DistributedCache
from ultra_tasks.cache import request_digest
from ultra_tasks.providers.base import ChatMessage, LLMRequest
mode, ns = sys.argv[1], sys.argv[2]
request = LLMRequest("gpt-4o", (ChatMessage("user", "same question"),), 64, 0.0, {"top_p": 1})
key = request_digest(request)
cache = DistributedCache(memory_cache_size=10, redis_url=os.environ["REDIS_URL"])
r = redis.Redis.from_url(os.environ["REDIS_URL"])
if mode == "write":
    cache.put_sync(key, {"text": "cached answer"}, ns)
    print(json.dumps({"key": key}))
elif mode == "read":
    print(json.dumps({"key": key, "value": cache.get_sync(key, ns)}))
elif mode == "hold":
    cache.put_sync("k", "v", ns)
    assert cache.memory.get(ns + ":k") == "v"
    r.set(ns + ":ready", 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and cache.memory.get(ns + ":k") == "v":
        time.sleep(0.02)
    print(json.dumps({"dropped": cache.memory.get(ns + ":k") != "v"}))
"""


def _child(mode: str, ns: str, hash_seed: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )


def _out(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_value_written_by_one_process_is_read_by_another_with_a_different_hash_seed() -> None:
    ns = _ns()
    written = _out(_child("write", ns, "1"))
    read = _out(_child("read", ns, "4242"))
    assert read["key"] == written["key"]  # the digest is stable across processes
    assert read["value"] == {"text": "cached answer"}


def test_namespace_invalidation_reaches_another_processes_memory_level(
    caches: Any, redis_client: Any
) -> None:
    ns = _ns()
    holder = _child("hold", ns, "7")
    deadline = time.monotonic() + 30
    while not redis_client.exists(f"{ns}:ready"):
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # its listener is subscribed
    caches().invalidate_namespace_sync(ns)
    assert _out(holder) == {"dropped": True}


def test_invalidations_reach_the_disk_level_of_another_host(tmp_path: Path) -> None:
    # two hosts: each with its own disk directory, sharing the Redis level
    here, there = (
        DistributedCache(disk_cache_dir=tmp_path / host, redis_url=os.environ["REDIS_URL"])
        for host in ("here", "there")
    )
    try:
        ns = _ns()
        for cache in (here, there):
            cache.put_sync("a", {"v": 1}, namespace=ns)
            cache.put_sync("b", {"v": 2}, namespace=ns)
        time.sleep(0.3)  # both listeners are subscribed
        here.invalidate_sync("a", namespace=ns)
        _wait_until(lambda: there.disk is not None and there.disk.get(f"{ns}:a")[0] is MISS)
        assert there.get_sync("b", namespace=ns) == {"v": 2}  # one key: the rest stays
        here.invalidate_namespace_sync(ns)
        _wait_until(lambda: there.disk is not None and there.disk.get(f"{ns}:b")[0] is MISS)
        assert there.get_sync("b", namespace=ns) is None
    finally:
        here.close()
        there.close()


def _wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the invalidation did not arrive"
        time.sleep(0.05)


def test_stats_report_size_utilization_invalidations_and_read_time_per_level(caches: Any) -> None:
    ns = _ns()
    cache = caches(memory=4)
    for i in range(3):
        cache.put_sync(f"k{i}", i, ns)
    cache.get_sync("k0", ns)
    cache.get_sync("absent", ns)
    cache.invalidate_sync("k1", ns)
    stats = cache.stats()
    assert (stats["memory"]["size"], stats["memory"]["capacity"]) == (2, 4)
    assert stats["memory"]["utilization"] == 0.5
    assert stats["memory"]["invalidations"] == 1
    assert (stats["memory"]["hits"], stats["memory"]["misses"]) == (1, 1)
    assert stats["memory"]["avg_read_us"] is not None and stats["memory"]["avg_read_us"] > 0
    assert stats["disk"]["size"] == 2 and stats["disk"]["bytes"] > 0
    assert stats["disk"]["misses"] == 1 and stats["redis"]["misses"] == 1
