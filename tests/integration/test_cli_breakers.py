"""`ultra breakers ...` against the real Redis."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import ultra_cli as ultra

from ultra_tasks import CircuitBreaker, keys
from ultra_tasks.resilience.breaker import INDEX_REFRESH_S, breaker_names

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


def test_forgetting_a_breaker_deletes_its_keys_and_a_process_still_using_it_lists_it_again(
    redis_client: Any,
) -> None:
    # Given a breaker with state and counters in Redis, used by this process (its clock under our hand)
    name = f"cli-gone-{uuid.uuid4().hex[:6]}"
    clock = [1000.0]
    breaker = CircuitBreaker(name, failure_threshold=1, reset_timeout=60, monotonic=lambda: clock[0])
    with pytest.raises(RuntimeError):
        breaker.call(_fail)
    assert breaker.state == CircuitBreaker.OPEN
    assert any(redis_client.exists(key) for key in keys.breaker(name))
    # When an operator forgets it
    out = ultra("breakers", "forget", name)
    # Then its keys and its line are gone
    assert out.returncode == 0 and f"{name}: forgotten" in out.stdout, out.stderr
    assert not any(redis_client.exists(key) for key in keys.breaker(name))
    assert name not in breaker_names(redis_client)
    assert ultra("breakers", "forget", name).returncode == 2  # nothing left to forget
    # and a process still using it starts it afresh, closed, and lists it again within INDEX_REFRESH_S
    clock[0] += INDEX_REFRESH_S + CircuitBreaker(name).sync_interval + 1
    breaker.forget_verdict()
    assert breaker.call(lambda: "ok") == "ok"
    breaker.flush()
    assert breaker.state == CircuitBreaker.CLOSED
    assert name in breaker_names(redis_client)


def _fail() -> None:
    raise RuntimeError("down")
