"""`ultra status` against the real Redis and database: output and the exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from conftest import _free_port
from conftest import ultra_cli as ultra

from ultra_tasks.mode.operation_mode import SystemOperationMode

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("database", "redis_client")]


@pytest.fixture
def normal_mode() -> Iterator[None]:
    """The mode starts and ends NORMAL (no override; the test's components are reported ok after)."""
    assert ultra("mode", "clear").returncode == 0
    yield
    assert ultra("mode", "clear").returncode == 0


@pytest.mark.usefixtures("normal_mode")
def test_status_in_normal_mode_exits_0_and_shows_every_part() -> None:
    component = f"disk-{uuid.uuid4().hex[:6]}"
    SystemOperationMode().record_component(component, "ok", "writable", kind="disk_cache", severity="low")
    out = ultra("status")
    assert out.returncode == 0, out.stderr
    assert "mode: NORMAL" in out.stdout
    for shown in (
        "components",
        component,
        "queues",
        "llm.high",
        "llm.default",
        "llm.low",
        "ops",
        "last 300s",
    ):
        assert shown in out.stdout
    snap = json.loads(ultra("status", "--json", "--window", "60").stdout)
    assert snap["mode"]["mode"] == "NORMAL" and snap["errors"] == {}
    assert snap["queue_stats"]["window_s"] == 60.0
    assert set(snap["queues"]) == {"llm.high", "llm.default", "llm.low", "ops"}


@pytest.mark.usefixtures("normal_mode")
def test_status_exits_6_under_an_emergency_override_and_5_when_degraded() -> None:
    # Given an operator's EMERGENCY override
    assert ultra("mode", "set", "EMERGENCY", "--for", "600").returncode == 0
    # Then status says so, with the reason, and exits 6
    out = ultra("status")
    assert out.returncode == 6, out.stderr
    assert "mode: EMERGENCY" in out.stdout and "operator override until" in out.stdout
    assert "operator: override - manual override until" in out.stdout
    snap = json.loads(ultra("status", "--json").stdout)
    assert snap["mode"]["override"]["mode"] == "EMERGENCY"
    assert snap["timeline"][0]["to"] == "EMERGENCY"
    # and a DEGRADED override exits 5
    assert ultra("mode", "set", "DEGRADED", "--for", "600").returncode == 0
    degraded = ultra("status", "--json")
    assert degraded.returncode == 5 and json.loads(degraded.stdout)["mode"]["mode"] == "DEGRADED"


@pytest.mark.usefixtures("normal_mode")
def test_status_with_redis_unreachable_exits_by_the_recorded_mode_and_warns() -> None:
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    out = ultra("status")
    assert out.returncode == 0
    # the queue table (read from Redis) is left out; the components table may list a "queues" check
    assert "mode: NORMAL" in out.stdout and "waiting" not in out.stdout
    assert "warning: redis unreadable" in out.stderr and "refused" in out.stderr.lower()


def test_status_exits_3_when_neither_redis_nor_the_database_can_be_read() -> None:
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    os.environ["DATABASE_URL"] = f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/nowhere"
    out = ultra("status", "--json")
    assert out.returncode == 3
    snap = json.loads(out.stdout)
    assert snap["mode"]["mode"] == "UNKNOWN" and set(snap["errors"]) == {"redis", "database"}
    assert "redis unreadable" in out.stderr and "database unreadable" in out.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("breakers", "list"),
        ("mode", "show"),
        ("jobs", "list"),
        ("cache", "stats"),
        ("submit", "hello", "--no-wait"),
    ],
)
def test_commands_exit_3_naming_the_store_that_cannot_be_reached(command: tuple[str, ...]) -> None:
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    os.environ["DATABASE_URL"] = f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/nowhere"
    out = ultra(*command)
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert "redis unavailable" in out.stderr or "database unavailable" in out.stderr


@pytest.mark.usefixtures("closed_provider_breakers")
def test_status_says_what_happens_while_every_provider_is_down() -> None:
    from ultra_tasks import CircuitBreaker

    for name in ("openai", "anthropic"):
        CircuitBreaker(name).force_open()
    try:
        out = ultra("status")
        assert "every provider's breaker is open: LLM jobs are parked" in out.stdout.replace("\n", " ")
        snapshot = json.loads(ultra("status", "--json").stdout)
        assert "health checks probe each open breaker" in snapshot["all_providers_down"]
        from ultra_tasks.status.web import render_page

        assert 'id="all-providers-down"' in render_page(snapshot)
        CircuitBreaker("anthropic").reset()
        assert json.loads(ultra("status", "--json").stdout)["all_providers_down"] is None
    finally:
        for name in ("openai", "anthropic"):
            CircuitBreaker(name).reset()
