"""``fleet_snapshot()`` against a real Redis (a private one we can stop) and the real SQL database."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import RedisServer, _free_port

from ultra_tasks import CircuitBreaker, keys
from ultra_tasks.config import reset_settings
from ultra_tasks.mode.operation_mode import SystemOperationMode
from ultra_tasks.status.snapshot import fleet_snapshot

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("database")]


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True)


@pytest.fixture
def private(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = _client(private_redis.url)
    yield client
    client.close()


@pytest.fixture
def database_down() -> None:
    """DATABASE_URL points at a port nobody listens on (restored by conftest's environment fixture)."""
    os.environ["DATABASE_URL"] = f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/nowhere"
    reset_settings()


def test_snapshot_shows_mode_override_components_breakers_queues_and_timeline(private: redis.Redis) -> None:
    # Given a breaker forced open, messages in the queues (one at a lower priority step), parked jobs,
    # a degraded component and an operator's EMERGENCY override
    name = f"snap-{uuid.uuid4().hex[:6]}"
    breaker = CircuitBreaker(name, redis_client=private)
    breaker.call(lambda: None)
    breaker.force_open()
    private.rpush("llm.high", "m1", "m2")
    private.rpush("llm.low\x06\x169", "m3")
    private.rpush("ops", "m4")
    private.zadd(keys.parked("llm.default"), {"job-1": 1.0, "job-2": 2.0})
    component = f"disk-{uuid.uuid4().hex[:6]}"
    mode = SystemOperationMode(redis_client=private)
    mode.record_component(component, "degraded", "slow disk", kind="disk_cache", severity="medium")
    mode.set_override("EMERGENCY", 600)
    try:
        # When the snapshot is taken
        snap = fleet_snapshot(redis_client=private)
    finally:
        mode.record_component(component, "ok", "recovered", kind="disk_cache", severity="low")
        mode.clear_override()

    # Then every part is there, JSON-safe, and nothing failed
    assert json.loads(json.dumps(snap)) == snap
    assert snap["errors"] == {}
    assert snap["mode"]["mode"] == "EMERGENCY" and snap["mode"]["source"] == "database"
    assert snap["mode"]["override"]["mode"] == "EMERGENCY" and snap["mode"]["override"]["until"]
    assert snap["mode"]["reasons"][0]["component"] == "operator"
    assert snap["mode"]["changed_at"]
    mine = [c for c in snap["components"] if c["component"] == component]
    assert mine == [
        {
            "component": component,
            "kind": "disk_cache",
            "status": "degraded",
            "reason": "slow disk",
            "severity": "medium",
            "at": mine[0]["at"],
        }
    ]
    assert mine[0]["at"]
    assert snap["timeline"][0]["to"] == "EMERGENCY" and len(snap["timeline"]) <= 50
    [row] = [b for b in snap["breakers"] if b["name"] == name]
    assert row["state"] == "forced-open" and row["successes"] == 1 and row["failure_count"] == 0
    assert row["last_failure_time"] == 0 and row["last_failure_at"] is None
    assert snap["queues"] == {
        "llm.high": {"depth": 2, "parked": 0},
        "llm.default": {"depth": 0, "parked": 2},
        "llm.low": {"depth": 1, "parked": 0},
        "ops": {"depth": 1, "parked": 0},
    }
    assert snap["queue_stats"]["window_s"] == 300.0
    assert isinstance(snap["cache"], dict)


def test_redis_stopping_leaves_queues_and_breakers_out_and_says_why(
    private_redis: RedisServer, private: redis.Redis
) -> None:
    # Given a snapshot that could read Redis
    CircuitBreaker(f"snap-{uuid.uuid4().hex[:6]}", redis_client=private).call(lambda: None)
    assert "queues" in fleet_snapshot(redis_client=private)
    # When Redis stops
    private_redis.stop()
    snap = fleet_snapshot(redis_client=private)
    # Then the Redis parts are left out, the mode comes from SQL, and the error names the server
    assert "queues" not in snap and "breakers" not in snap
    assert f"127.0.0.1:{private_redis.port}" in snap["errors"]["redis"]
    assert "database" not in snap["errors"]
    assert snap["mode"]["source"] == "database"
    assert snap["mode"]["mode"] in ("NORMAL", "DEGRADED", "EMERGENCY")
    assert isinstance(snap["components"], list) and "processed" in snap["queue_stats"]
    assert json.loads(json.dumps(snap)) == snap


def test_redis_on_a_closed_port_degrades_the_same_way() -> None:
    port = _free_port()
    snap = fleet_snapshot(redis_client=_client(f"redis://127.0.0.1:{port}/0"))
    assert "queues" not in snap and "breakers" not in snap
    assert f"127.0.0.1:{port}" in snap["errors"]["redis"] and "refused" in snap["errors"]["redis"].lower()
    assert snap["mode"]["source"] == "database"


@pytest.mark.usefixtures("database_down")
def test_database_down_takes_the_mode_from_the_redis_mirror(private: redis.Redis) -> None:
    reasons = [{"component": "database", "kind": "database", "status": "critical", "reason": "gone"}]
    private.hset(
        keys.mode_current(),
        mapping={"mode": "DEGRADED", "reasons": json.dumps(reasons), "at": "2030-01-01T00:00:00+00:00"},
    )
    snap = fleet_snapshot(redis_client=private)
    assert snap["mode"] == {
        "mode": "DEGRADED",
        "reasons": reasons,
        "changed_at": None,
        "override": None,
        "source": "redis",
        "mirrored_at": "2030-01-01T00:00:00+00:00",
    }
    for part in ("components", "timeline", "queue_stats"):
        assert part not in snap
    assert "refused" in snap["errors"]["database"].lower() and "redis" not in snap["errors"]
    assert snap["queues"]["llm.high"] == {"depth": 0, "parked": 0}
    assert snap["breakers"] == []


@pytest.mark.usefixtures("database_down")
def test_nothing_readable_gives_an_unknown_mode_and_both_reasons() -> None:
    snap = fleet_snapshot(redis_client=_client(f"redis://127.0.0.1:{_free_port()}/0"))
    assert snap["mode"]["mode"] == "UNKNOWN" and snap["mode"]["source"] is None
    assert set(snap["errors"]) == {"redis", "database"}
    assert set(snap) == {"generated_at", "mode", "cache", "errors", "deployments"}


def test_a_redis_that_never_answers_costs_the_deadline_not_a_hang() -> None:
    # Given a server that accepts connections and never replies, and a client willing to wait 30 s
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30, socket_connect_timeout=30)
    try:
        snap: dict[str, Any] = fleet_snapshot(redis_client=client, timeout_s=1.0)
    finally:
        silent.close()
    # Then the snapshot comes back after the 1 s deadline, with the database parts
    assert snap["errors"] == {"redis": f"127.0.0.1:{port}/0: no answer within 1s"}
    assert snap["mode"]["source"] == "database" and "queue_stats" in snap


def test_a_window_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        fleet_snapshot(window_s=0)
