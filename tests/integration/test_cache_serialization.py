"""Every cache level holds JSON text only: a row that is not ours (pickled, malformed, the wrong shape) is a
miss, counted as corrupt and removed, and nothing read from the cache is ever unpickled."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import diskcache
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ultra_tasks import DistributedCache
from ultra_tasks.cache.admin import disk_level_stats
from ultra_tasks.keys import cache_entry
from ultra_tasks.metrics import fleet_registry
from ultra_tasks.metrics.buffer import BUFFER

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client")]


class RunsCode:
    """Unpickling this creates ``marker``: what an attacker who can write the cache directory would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def disk_cache(tmp_path: Path) -> Any:
    """The project's cache with only its disk level (memory off, so every read goes to disk)."""
    cache = DistributedCache(memory_cache_size=0, disk_cache_dir=tmp_path / "cache")
    yield cache
    cache.close()


def _fleet_corrupt(level: str) -> float:
    """ultra_cache_corrupt_total{level} as /metrics serves it, after this process flushed its counts."""
    BUFFER.flush()
    for family in text_string_to_metric_families(generate_latest(fleet_registry()).decode()):
        for sample in family.samples:
            if sample.name == "ultra_cache_corrupt_total" and sample.labels.get("level") == level:
                return sample.value
    return 0.0


def test_a_pickled_disk_row_is_never_unpickled_and_reads_as_a_corrupt_miss(
    disk_cache: DistributedCache, tmp_path: Path
) -> None:
    # Given a row written in pickle mode, with diskcache's default Disk, straight into the cache directory
    ns, marker = _ns(), tmp_path / "code-ran"
    disk_cache.put_sync("k", "a value of ours", ns)  # the level is open and holds our entry for the key
    with diskcache.Cache(str(tmp_path / "cache")) as planted:
        planted.set(f"{ns}:k", RunsCode(marker))
    before = _fleet_corrupt("disk")

    # When the project's cache reads that key
    value = disk_cache.get_sync("k", ns, default="miss")

    # Then no code ran, the read was a miss, and the row was counted as corrupt and removed
    assert not marker.exists()
    assert value == "miss"
    assert disk_cache.stats()["disk"]["corrupt"] == 1
    assert _fleet_corrupt("disk") >= before + 1
    with diskcache.Cache(str(tmp_path / "cache")) as raw:
        assert f"{ns}:k" not in raw


def test_a_pickled_row_too_large_for_the_database_is_stored_as_a_file_and_still_never_unpickled(
    disk_cache: DistributedCache, tmp_path: Path
) -> None:
    # diskcache keeps values above its min file size in files (still in pickle mode): the same refusal
    ns, marker = _ns(), tmp_path / "code-ran"
    disk_cache.put_sync("warm", 1, ns)
    with diskcache.Cache(str(tmp_path / "cache"), disk_min_file_size=0) as planted:
        planted.set(f"{ns}:k", RunsCode(marker))
    assert disk_cache.get_sync("k", ns) is None
    assert not marker.exists()
    assert disk_cache.stats()["disk"]["corrupt"] == 1


def test_listing_and_clearing_the_disk_level_never_unpickle_a_key(
    disk_cache: DistributedCache, tmp_path: Path
) -> None:
    # Given a row whose key (not value) was pickled by someone else
    ns, marker = _ns(), tmp_path / "code-ran"
    disk_cache.put_sync("k", "ours", ns)
    with diskcache.Cache(str(tmp_path / "cache")) as planted:
        planted.set(RunsCode(marker), "value")

    # When an operator lists the disk level (`ultra cache stats`) and clears a namespace (`ultra cache clear`)
    stats = disk_level_stats(tmp_path / "cache")
    disk_cache.invalidate_namespace_sync(ns)

    # Then no code ran; our entry was counted and cleared; the foreign row is none of ours
    assert not marker.exists()
    assert stats["namespaces"] == {ns: 1}
    assert disk_cache.get_sync("k", ns) is None


@pytest.mark.parametrize(
    "stored",
    [
        "{not json",
        '["v", "e"]',
        '{"v": 1}',
        '{"v": 1, "e": "tomorrow"}',
        '{"v": 1, "e": true}',
        '{"v": 1, "e": NaN}',
        '{"v": 1, "e": null, "x": 2}',
        b"\x80\x81 not utf-8",
        42,
    ],
)
def test_a_disk_row_that_is_not_our_json_envelope_is_a_corrupt_miss(
    disk_cache: DistributedCache, tmp_path: Path, stored: Any
) -> None:
    ns = _ns()
    disk_cache.put_sync("warm", 1, ns)
    with diskcache.Cache(str(tmp_path / "cache")) as planted:
        planted.set(f"{ns}:k", stored)
    assert disk_cache.get_sync("k", ns, default="miss") == "miss"
    assert disk_cache.stats()["disk"]["corrupt"] == 1
    assert disk_cache.get_sync("warm", ns) == 1  # the level itself still serves


@pytest.mark.parametrize("stored", ['{"v": 1, "e": "tomorrow"}', b"\x80\x03cos\nsystem\n."])
def test_a_redis_entry_that_is_not_our_json_envelope_is_a_corrupt_miss(
    redis_client: Any, stored: Any
) -> None:
    ns = _ns()
    cache = DistributedCache(
        memory_cache_size=10, redis_url=os.environ["REDIS_URL"], listen_for_invalidations=False
    )
    try:
        redis_client.set(cache_entry(ns, "k"), stored)
        assert cache.get_sync("k", ns, default="miss") == "miss"
        assert cache.stats()["redis"]["corrupt"] == 1
        assert redis_client.exists(cache_entry(ns, "k")) == 0
    finally:
        cache.close()


def test_the_disk_level_refuses_to_store_anything_diskcache_would_pickle(
    disk_cache: DistributedCache,
) -> None:
    ns = _ns()
    disk_cache.put_sync("k", {"any": ["JSON"]}, ns)  # opens the level
    level = disk_cache.disk._open()  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="JSON text only"):
        level.set(f"{ns}:object", {"a": 1})
    with pytest.raises(TypeError, match="str or bytes"):
        level.set(("a", "tuple", "key"), "value")
    assert disk_cache.get_sync("k", ns) == {"any": ["JSON"]}
