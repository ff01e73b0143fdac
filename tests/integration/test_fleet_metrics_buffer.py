"""How processes feed the fleet metrics: counts batched in process and sent in one pipeline, nothing sent per
cache hit, nothing lost while Redis is away, and job outcomes read back as a proper histogram."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ultra_tasks import DistributedCache, keys
from ultra_tasks.fleet.cache import read_cache
from ultra_tasks.metrics import FleetCollector, fleet_registry
from ultra_tasks.metrics.buffer import MetricsBuffer
from ultra_tasks.metrics.cache import CacheMetricsTracker
from ultra_tasks.metrics.jobs import LATENCY_BUCKETS_S, record_job_outcome

pytestmark = pytest.mark.timeout(60)


def _client(server: Any) -> redis.Redis:
    return redis.Redis.from_url(
        server.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_memory_hits_cost_no_redis_command_and_reach_the_fleet_hash_in_one_batch(private_redis: Any) -> None:
    client = _client(private_redis)
    buffer = MetricsBuffer(interval_s=3600, client_factory=lambda: client)  # flushed by hand below
    tracker = CacheMetricsTracker(buffer)
    cache = DistributedCache(memory_cache_size=10, listen_for_invalidations=False)
    tracker.track(cache)
    cache.put_sync("k", {"v": 1})
    client.config_resetstat()

    # When a process serves a thousand memory hits
    for _ in range(1000):
        assert cache.get_sync("k") == {"v": 1}
    # Then Redis has not been asked anything ...
    assert sum(_calls(client).values()) <= 1  # (the INFO that reads the stats)
    # ... until the flush, which sends the counts as a handful of increments in one pipeline
    assert buffer.flush() is True
    calls = _calls(client)
    assert calls.get("hincrby", 0) + calls.get("hincrbyfloat", 0) <= 4
    memory = read_cache(client).levels["memory"]
    assert memory.hits == 1000 and memory.hit_rate == 1.0
    # and a flush with nothing new sends nothing
    client.config_resetstat()
    buffer.flush()
    assert _calls(client).get("hincrby", 0) == 0


def test_counts_made_while_redis_is_down_are_sent_when_it_returns(private_redis: Any) -> None:
    client = _client(private_redis)
    buffer = MetricsBuffer(interval_s=3600, client_factory=lambda: client)
    buffer.incr("fleet:test", "jobs", 5)
    private_redis.stop()
    assert buffer.flush() is False  # kept in process, not lost
    buffer.incr("fleet:test", "jobs", 2)
    private_redis.start()
    assert buffer.flush() is True
    assert client.hget("fleet:test", "jobs") == "7"
    assert buffer.pending() == 0


def test_job_outcomes_read_back_as_a_cumulative_histogram_and_fallback_counters(private_redis: Any) -> None:
    client = _client(private_redis)
    buffer = MetricsBuffer(interval_s=3600, client_factory=lambda: client)
    served = {"status": "succeeded", "provider": "openai", "model": "gpt-4o-mini", "cached": False}
    for ms in (3.0, 40.0, 40.0, 700.0, 500_000.0):  # the last beyond every bound: only in +Inf
        record_job_outcome({**served, "latency_ms": ms}, "gpt-4o-mini", buffer=buffer)
    fallback = {**served, "fallback_used": True, "latency_ms": 1200.0}
    record_job_outcome(fallback, "claude-3-5-haiku-latest", buffer=buffer)
    failed = {
        "status": "failed",
        "error": {
            "attempts": [{"entry": "anthropic:claude-3-5-haiku-latest"}, {"entry": "openai:gpt-4o-mini"}]
        },
    }
    record_job_outcome(failed, "claude-3-5-haiku-latest", buffer=buffer)
    record_job_outcome({"status": "deferred"}, "gpt-4o", buffer=buffer)  # not an outcome: ignored
    assert buffer.flush()

    collector = FleetCollector(redis_client=client, broker_client=client)
    text = generate_latest(fleet_registry(collector)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("cached", "false"), ("model", "gpt-4o-mini"), ("provider", "openai"))

    def bucket(le: str) -> float:
        return samples[("ultra_job_latency_seconds_bucket", tuple(sorted((*labels, ("le", le)))))]

    bounds = [repr(float(b)) for b in LATENCY_BUCKETS_S]
    counts = [bucket(le) for le in bounds]
    assert counts == sorted(counts)  # cumulative
    assert bucket("0.005") == 1 and bucket("0.05") == 3 and bucket("1.0") == 4 and bucket("2.5") == 5
    assert bucket("120.0") == 5 and bucket("+Inf") == 6
    assert samples[("ultra_job_latency_seconds_count", labels)] == 6
    assert samples[("ultra_job_latency_seconds_sum", labels)] == pytest.approx(0.003 + 0.08 + 0.7 + 500 + 1.2)
    model = (("model", "claude-3-5-haiku-latest"),)
    assert samples[("ultra_fallback_invocations_total", model)] == 2  # the served one and the failed one
    assert samples[("ultra_fallback_successes_total", model)] == 1
    assert samples[("ultra_fallback_primary_failures_total", model)] == 2
    assert samples[("ultra_fallback_latency_seconds_sum", model)] == pytest.approx(1.2)
    finished = ("ultra_jobs_finished_total", (("model", "gpt-4o-mini"), ("status", "succeeded")))
    assert samples[finished] == 5
    assert ("ultra_jobs_finished_total", (("model", "gpt-4o"), ("status", "deferred"))) not in samples
    assert client.hlen(keys.metrics_jobs()) > 0
