"""``read_fleet()`` against a real Redis (a private one we can stop) and the real SQL database: one read
serves every renderer, and one deadline bounds it whatever a part does."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import RedisServer, _free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from ultra_tasks import CircuitBreaker, keys
from ultra_tasks.db.engine import transaction
from ultra_tasks.fleet import FleetSnapshot, Part, read_fleet
from ultra_tasks.fleet.read import Sources
from ultra_tasks.metrics import FleetCollector, fleet_registry
from ultra_tasks.metrics.rollup import SAMPLED_PARTS, sample_fleet
from ultra_tasks.mode.operation_mode import SystemOperationMode
from ultra_tasks.status.snapshot import snapshot_json

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("database")]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _client(url: str, timeout: float | None = 0.5) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=0.5, decode_responses=True
    )


@pytest.fixture
def private(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = _client(private_redis.url)
    yield client
    client.close()


def _read(client: redis.Redis, **options: Any) -> FleetSnapshot:
    return read_fleet(redis_client=client, broker_client=client, **options)


def _metrics(snapshot: FleetSnapshot) -> Samples:
    registry = fleet_registry(FleetCollector(read=lambda: snapshot))
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_one_read_serves_metrics_and_status_json_alike_without_reading_again(
    private_redis: RedisServer, private: redis.Redis
) -> None:
    # Given a breaker forced open, messages waiting, parked jobs and an operator's DEGRADED override
    name = f"read-{uuid.uuid4().hex[:6]}"
    CircuitBreaker(name, redis_client=private).force_open()
    private.rpush("llm.high", "m1", "m2", "m3")
    private.zadd(keys.parked("llm.low"), {"job-1": 1.0})
    mode = SystemOperationMode(redis_client=private)
    mode.set_override("DEGRADED", 600)
    try:
        # When the fleet is read once
        snapshot = _read(private)
    finally:
        mode.clear_override()
    # and Redis stops before anything is rendered
    private_redis.stop()
    shown = snapshot_json(snapshot)
    samples = _metrics(snapshot)

    # Then both renderings show the same read, whole
    assert shown["errors"] == {} and not snapshot.unavailable
    assert (
        shown["mode"]["mode"] == "DEGRADED" and _value(samples, "ultra_operation_mode", mode="DEGRADED") == 1
    )
    assert _value(samples, "ultra_operation_mode_override") == 1
    [breaker] = [b for b in shown["breakers"] if b["name"] == name]
    assert breaker["state"] == "forced-open"
    assert _value(samples, "ultra_circuit_breaker_state", breaker=name, state="forced-open") == 1
    for queue, q in shown["queues"].items():
        assert _value(samples, "ultra_queue_depth", queue=queue) == q["depth"]
        if queue in keys.LLM_QUEUES:  # only LLM jobs are parked
            assert _value(samples, "ultra_queue_parked", queue=queue) == q["parked"]
    assert shown["queues"]["llm.high"] == {"depth": 3, "parked": 0}
    assert shown["queues"]["llm.low"] == {"depth": 0, "parked": 1}
    assert _value(samples, "ultra_queue_max_size") == shown["admission"]["max_size"]
    assert _value(samples, "ultra_queue_window_seconds") == shown["queue_stats"]["window_s"]
    parts_up = {dict(ls)["part"]: v for (n, ls), v in samples.items() if n == "ultra_metrics_part_up"}
    assert set(parts_up) == {p.value for p in Part} | {"mode"} and all(v == 1 for v in parts_up.values())


def test_a_part_that_hangs_past_the_deadline_is_unavailable_and_the_rest_arrive_in_time(
    private_redis: RedisServer, private: redis.Redis
) -> None:
    # Given a cache reader stuck in a Redis command that blocks for 30 s, on a client that waits as long
    stuck = _client(private_redis.url, timeout=None)

    def hangs(_: Sources) -> Any:
        return stuck.blpop(["never-pushed"], timeout=30)

    # When the fleet is read with a 2 s deadline
    started = time.monotonic()
    snapshot = _read(private, timeout_s=2.0, readers={Part.CACHE: hangs})
    elapsed = time.monotonic() - started

    # Then the call returns at the deadline, the cache is unavailable and says why, the rest is there
    assert 2.0 <= elapsed < 2.5
    assert snapshot.cache is None
    assert set(snapshot.unavailable) == {Part.CACHE}
    assert snapshot.unavailable[Part.CACHE].reason == f"127.0.0.1:{private_redis.port}/0: no answer within 2s"
    assert snapshot.breakers is not None and snapshot.queues is not None and snapshot.mode_history is not None
    shown = snapshot_json(snapshot)
    assert shown["errors"] == {"cache": snapshot.unavailable[Part.CACHE].reason}
    assert shown["cache"] == {} and "queues" in shown and "breakers" in shown
    samples = _metrics(snapshot)
    assert _value(samples, "ultra_metrics_part_up", part="cache") == 0
    assert _value(samples, "ultra_metrics_part_up", part="breakers") == 1
    assert _value(samples, "ultra_metrics_source_up", source="redis") == 0
    assert _value(samples, "ultra_metrics_source_up", source="database") == 1
    assert not any(n.startswith("ultra_cache_") for n, _ in samples)
    stuck.close()


def test_a_redis_error_that_is_not_a_timeout_leaves_out_only_its_part(private: redis.Redis) -> None:
    # Given the breaker index overwritten with a string: Redis answers SMEMBERS with WRONGTYPE
    private.set(keys.breaker_index(), "not a set")
    # When the fleet is read
    snapshot = _read(private)
    # Then only the breakers are missing, with Redis' own words, and every other Redis part is there
    assert set(snapshot.unavailable) == {Part.BREAKERS}
    assert "WRONGTYPE" in snapshot.unavailable[Part.BREAKERS].reason
    assert snapshot.cache is not None and snapshot.parked is not None and snapshot.mode_mirror is not None
    shown = snapshot_json(snapshot)
    assert "breakers" not in shown and "all_providers_down" not in shown
    assert set(shown["errors"]) == {"breakers"} and "queues" in shown
    assert _value(_metrics(snapshot), "ultra_metrics_part_up", part="breakers") == 0


def test_a_redis_refusing_writes_for_memory_still_serves_every_part(private: redis.Redis) -> None:
    # Given a Redis out of memory under noeviction (it refuses writes, answers reads)
    private.config_set("maxmemory-policy", "noeviction")
    private.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            private.set("probe", "x")
        # When the fleet is read, with a reader that has to write
        snapshot = _read(private, readers={Part.JOBS: lambda s: s.state.hincrby("probe", "n")})
    finally:
        private.config_set("maxmemory", "0")
    # Then that reader's part alone is unavailable, and the reads went on
    assert set(snapshot.unavailable) == {Part.JOBS}
    assert "maxmemory" in snapshot.unavailable[Part.JOBS].reason
    assert snapshot.breakers == [] and snapshot.cache is not None


def test_an_sql_error_leaves_out_only_its_part(private: redis.Redis) -> None:
    # Given a job table reader whose statement the database refuses
    def bad_sql(_: Sources) -> Any:
        with transaction() as conn:
            return conn.execute(text("SELECT * FROM no_such_table")).all()

    snapshot = _read(private, readers={Part.JOB_TABLE: bad_sql})
    assert set(snapshot.unavailable) == {Part.JOB_TABLE}
    assert "no_such_table" in snapshot.unavailable[Part.JOB_TABLE].reason
    assert snapshot.queue_stats is not None and snapshot.components is not None
    assert set(snapshot_json(snapshot)["errors"]) == {"job_table"}


def test_a_reader_that_breaks_is_logged_with_its_traceback_and_leaves_out_only_its_part(
    private: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: Sources) -> Any:
        return {}["missing"]

    with caplog.at_level(logging.ERROR, logger="ultra_tasks.fleet.read"):
        snapshot = _read(private, readers={Part.ADMISSION: broken})
    assert snapshot.unavailable[Part.ADMISSION].reason == "KeyError: 'missing'"
    assert set(snapshot.unavailable) == {Part.ADMISSION}
    assert any(r.exc_info for r in caplog.records if "admission" in r.getMessage())


def test_a_collector_and_a_rendering_start_no_thread_of_their_own(private: redis.Redis) -> None:
    snapshot = _read(private)
    time.sleep(0.1)  # the read's threads end as their parts return
    before = set(threading.enumerate())
    FleetCollector(redis_client=private, broker_client=private)
    _metrics(snapshot)
    snapshot_json(snapshot)
    assert set(threading.enumerate()) - before == set()


def test_a_broker_of_its_own_that_is_down_is_named_alone(private: redis.Redis) -> None:
    # Given a state Redis that answers and a broker Redis that nobody listens on
    port = _free_port()
    broker = _client(f"redis://127.0.0.1:{port}/0")
    snapshot = read_fleet(redis_client=private, broker_client=broker)
    # Then only the queue depths are missing, and the errors name the broker, not Redis
    assert set(snapshot.unavailable) == {Part.QUEUES}
    shown = snapshot_json(snapshot)
    assert set(shown["errors"]) == {"broker"} and f"127.0.0.1:{port}" in shown["errors"]["broker"]
    assert "queues" not in shown and "breakers" in shown and "admission" in shown
    samples = _metrics(snapshot)
    assert _value(samples, "ultra_metrics_source_up", source="broker") == 0
    assert _value(samples, "ultra_metrics_source_up", source="redis") == 1
    assert _value(samples, "ultra_metrics_part_up", part="parked") == 1


def test_the_sampler_records_this_minute_from_the_parts_it_plots(private: redis.Redis) -> None:
    private.zadd(keys.parked("llm.high"), {"job-1": 1.0})
    sample_fleet(private)
    [key] = private.keys(keys.rollup_minute("*"))
    recorded = private.hgetall(key)
    assert recorded["mode"] == "NORMAL" and recorded["parked:llm.high"] == "1" and "depth:ops" in recorded


def test_the_sampler_reads_only_the_parts_it_plots(private: redis.Redis) -> None:
    snapshot = _read(private, parts=SAMPLED_PARTS)
    assert snapshot.parts == SAMPLED_PARTS and not snapshot.unavailable
    assert snapshot.mode_history is None and snapshot.mode.source == "redis"
    assert set(snapshot_json(snapshot)) >= {"mode", "breakers", "queues", "cache", "errors"}
