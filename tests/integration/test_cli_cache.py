"""`ultra cache stats|clear` against the real Redis, the disk level and another process's memory level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import _free_port
from conftest import ultra_cli as ultra

from ultra_tasks import DistributedCache
from ultra_tasks.cache.base import MISS
from ultra_tasks.config import get_settings
from ultra_tasks.keys import cache_entry

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("redis_client")]

#: a process holding entries in its memory level; it reports whether they survived once told to look
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from ultra_tasks import DistributedCache
    from ultra_tasks.cache.base import MISS

    url, ns, keep, probe = sys.argv[1:5]
    cache = DistributedCache(memory_cache_size=100, redis_url=url)
    other = DistributedCache(memory_cache_size=1, redis_url=url, listen_for_invalidations=False)
    cache.put_sync("k", "cleared soon", ns)
    cache.put_sync("k", "stays", keep)
    # subscribed once an invalidation from another cache object reaches this memory level
    deadline = time.monotonic() + 10
    cache.memory.put(probe + ":x", '{"v": 1, "e": null}', None)
    while cache.memory.get(probe + ":x") is not MISS and time.monotonic() < deadline:
        other.invalidate_namespace_sync(probe)
        time.sleep(0.05)
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 5
    while cache.memory.get(ns + ":k") is not MISS and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({
        "dropped": cache.memory.get(ns + ":k") is MISS,
        "kept": cache.memory.get(keep + ":k") is not MISS,
    }), flush=True)
    """
)


def _ns() -> str:
    return f"cli{uuid.uuid4().hex[:8]}"


@pytest.fixture
def shared_cache() -> Iterator[DistributedCache]:
    """A cache on the levels the CLI sees: the session's Redis and this host's disk directory."""
    cache = DistributedCache(
        memory_cache_size=100,
        disk_cache_dir=get_settings().effective_cache_disk_dir,
        redis_url=os.environ["REDIS_URL"],
        listen_for_invalidations=False,
    )
    yield cache
    cache.close()


def test_clear_removes_redis_and_disk_entries_and_another_process_drops_its_memory_copy(
    redis_client: Any, shared_cache: DistributedCache
) -> None:
    ns, keep = _ns(), _ns()
    # Given another process holding ns and keep entries in memory, and the entries in Redis and on disk
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, os.environ["REDIS_URL"], ns, keep, _ns()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        shared_cache.put_sync("on-disk", "x", ns)
        assert redis_client.exists(cache_entry(ns, "k"), cache_entry(ns, "on-disk")) == 2
        assert shared_cache.disk is not None and shared_cache.disk.get(f"{ns}:on-disk")[0] == "x"

        # When the namespace is cleared
        out = ultra("cache", "clear", "--namespace", ns, "--yes")

        # Then its Redis keys and disk entries are gone, the other namespace stays, and the other process
        # dropped its memory copy
        assert out.returncode == 0, out.stderr
        assert f"cleared {ns}: 2 Redis entries, 1 disk entries on this host" in out.stdout
        assert redis_client.exists(cache_entry(ns, "k"), cache_entry(ns, "on-disk")) == 0
        assert redis_client.exists(cache_entry(keep, "k")) == 1
        assert shared_cache.disk.get(f"{ns}:on-disk")[0] is MISS
        child.stdin.write("go\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) == {"dropped": True, "kept": True}
    finally:
        child.kill()
        child.wait(10)


def test_stats_count_keys_and_bytes_per_namespace(redis_client: Any, shared_cache: DistributedCache) -> None:
    one, two = _ns(), _ns()
    for i in range(3):
        shared_cache.put_sync(f"k{i}", {"text": "x" * 100}, one)
    shared_cache.put_sync("k", "y", two)
    out = ultra("cache", "stats", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    redis_level = info["redis_level"]
    assert redis_level["namespaces"][one]["keys"] == 3 and redis_level["namespaces"][two]["keys"] == 1
    assert redis_level["namespaces"][one]["bytes"] > redis_level["namespaces"][two]["bytes"] > 0
    assert redis_level["truncated"] is False
    assert info["disk_level"]["namespaces"][one] == 3
    assert isinstance(info["fleet"], dict)
    table = ultra("cache", "stats")
    assert table.returncode == 0 and one in table.stdout and "Redis level" in table.stdout


def test_clear_of_every_namespace_needs_yes_without_a_terminal(
    redis_client: Any, shared_cache: DistributedCache
) -> None:
    one, two = _ns(), _ns()
    shared_cache.put_sync("k", 1, one)
    shared_cache.put_sync("k", 2, two)
    refused = ultra("cache", "clear")
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert redis_client.exists(cache_entry(one, "k"), cache_entry(two, "k")) == 2
    out = ultra("cache", "clear", "-y")
    assert out.returncode == 0, out.stderr
    assert one in out.stdout and two in out.stdout
    assert redis_client.exists(cache_entry(one, "k"), cache_entry(two, "k")) == 0


def test_clear_with_redis_down_clears_nothing_and_exits_3(shared_cache: DistributedCache) -> None:
    ns = _ns()
    shared_cache.put_sync("k", 1, ns)
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    out = ultra("cache", "clear", "--namespace", ns, "--yes")
    assert out.returncode == 3 and "nothing was cleared" in out.stderr
    assert shared_cache.disk is not None and shared_cache.disk.get(f"{ns}:k")[0] == 1
    stats = ultra("cache", "stats")
    assert stats.returncode == 3 and "redis unavailable" in stats.stderr


def test_a_malformed_namespace_is_refused_with_exit_2() -> None:
    out = ultra("cache", "clear", "--namespace", "no spaces", "--yes")
    assert out.returncode == 2 and "--namespace: namespace must match" in out.stderr
