"""`ultra breakers ...` against the real Redis."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import ultra_cli as ultra

from ultra_tasks import CircuitBreaker

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client")]


def test_operator_forces_open_and_resets_a_breaker_and_lists_it() -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    breaker = CircuitBreaker(name)
    breaker.call(lambda: None)
    out = ultra("breakers", "force-open", name)
    assert out.returncode == 0 and f"{name}: forced-open" in out.stdout
    assert breaker.state == CircuitBreaker.FORCED_OPEN
    listed = {row["name"]: row for row in json.loads(ultra("breakers", "list", "--json").stdout)}
    assert listed[name]["state"] == "forced-open"
    assert listed[name]["state_changes"] == {"closed->forced-open": 1}
    assert ultra("breakers", "reset", name).returncode == 0
    assert breaker.state == CircuitBreaker.CLOSED


def test_unknown_breaker_exits_2_naming_it() -> None:
    out = ultra("breakers", "reset", "no-such-breaker")
    assert out.returncode == 2
    assert "no breaker named 'no-such-breaker'" in out.stderr
