"""The operation mode record in SQL, its Redis mirror and broadcast, hysteresis, overrides, listeners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete

from ultra_tasks import SystemOperationMode, keys
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def mode(database: str, redis_client: Any) -> Iterator[SystemOperationMode]:
    """A fresh NORMAL system: no components, no history."""
    with session_scope() as s:
        for model in (ComponentStatus, ModeTransition, OperationModeRecord):
            s.execute(delete(model))
    redis_client.delete(keys.mode_current())
    m = SystemOperationMode()
    yield m
    m.close()


async def test_seed_usage_marks_a_component_and_notifies_listeners(mode: SystemOperationMode) -> None:
    notified: list[tuple[str, str, str]] = []

    async def notify_users(old_mode: str, new_mode: str, reasons: list[dict[str, Any]]) -> None:
        if new_mode != SystemOperationMode.NORMAL:
            notified.append((old_mode, new_mode, reasons[-1]["reason"]))

    mode.add_mode_change_listener(notify_users)
    await mode.mark_component_degraded("openai", "API rate limit exceeded", severity="medium")
    assert mode.current_mode == SystemOperationMode.DEGRADED
    deadline = time.monotonic() + 5
    while not notified and time.monotonic() < deadline:
        await __import__("asyncio").sleep(0.05)
    assert notified == [("NORMAL", "DEGRADED", "API rate limit exceeded")]
    assert mode.degraded_components["openai"]["reason"] == "API rate limit exceeded"


def test_transitions_and_reasons_are_recorded_and_mirrored_in_redis(
    mode: SystemOperationMode, redis_client: Any
) -> None:
    mode.record_component("openai", "critical", "HTTP 503", kind="llm_provider", severity="high")
    mode.record_component("anthropic", "ok", "fine", kind="llm_provider")
    assert mode.evaluate() == "DEGRADED"
    mode.record_component("anthropic", "critical", "HTTP 529", kind="llm_provider", severity="high")
    assert mode.evaluate() == "EMERGENCY"
    history = mode.history()
    assert [(h["from"], h["to"]) for h in reversed(history)] == [
        ("NORMAL", "DEGRADED"),
        ("DEGRADED", "EMERGENCY"),
    ]
    assert {r["component"] for r in history[0]["reasons"]} == {"openai", "anthropic"}
    assert redis_client.hget(keys.mode_current(), "mode") == "EMERGENCY"


def test_recovery_waits_for_consecutive_good_evaluations_so_a_flapping_check_does_not_flap_the_mode(
    mode: SystemOperationMode,
) -> None:
    mode.record_component("anthropic", "ok", "up", kind="llm_provider")
    mode.record_component("openai", "critical", "down", kind="llm_provider")
    assert mode.evaluate() == "DEGRADED"
    mode.record_component("openai", "ok", "up", kind="llm_provider")
    assert mode.evaluate() == "DEGRADED"  # one good check is not enough
    mode.record_component("openai", "critical", "down again", kind="llm_provider")
    assert mode.evaluate() == "DEGRADED"
    mode.record_component("openai", "ok", "up", kind="llm_provider")
    assert mode.evaluate() == "DEGRADED"
    assert mode.evaluate() == "NORMAL"  # two in a row
    assert [(h["from"], h["to"]) for h in reversed(mode.history())] == [
        ("NORMAL", "DEGRADED"),
        ("DEGRADED", "NORMAL"),
    ]


def test_manual_override_holds_until_it_expires(mode: SystemOperationMode) -> None:
    assert mode.set_override("EMERGENCY", ttl_seconds=1) == "EMERGENCY"
    assert mode.current_mode == "EMERGENCY"
    assert mode.degradation_reasons[0]["component"] == "operator"
    time.sleep(1.1)
    assert mode.evaluate() == "EMERGENCY"  # hysteresis: the first good evaluation after it holds
    assert mode.evaluate() == "NORMAL"
    with pytest.raises(ValueError):
        mode.set_override("PANIC", ttl_seconds=1)


def test_mode_is_read_from_sql_when_the_redis_mirror_is_missing(
    mode: SystemOperationMode, redis_client: Any
) -> None:
    mode.record_component("database", "critical", "slow", kind="database")
    mode.evaluate()
    redis_client.delete(keys.mode_current())
    assert mode.current_mode == "DEGRADED"


LISTENER = """
import json, sys, time
from ultra_tasks import SystemOperationMode
mode = SystemOperationMode()
seen = []
mode.add_mode_change_listener(lambda old, new, reasons: seen.append([old, new]))
print("ready", flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and len(seen) < 2:
    time.sleep(0.05)
time.sleep(0.5)  # a duplicate would arrive now
print(json.dumps(seen), flush=True)
"""


def test_each_listener_in_every_process_hears_each_change_once(mode: SystemOperationMode) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LISTENER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    local: list[list[str]] = []
    mode.add_mode_change_listener(lambda old, new, reasons: local.append([old, new]))
    mode.record_component("anthropic", "ok", "up", kind="llm_provider")
    mode.record_component("openai", "critical", "down", kind="llm_provider")
    mode.evaluate()
    mode.evaluate()  # no change: no event
    mode.record_component("redis", "critical", "down", kind="redis")
    mode.evaluate()
    expected = [["NORMAL", "DEGRADED"], ["DEGRADED", "EMERGENCY"]]
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert json.loads(out.strip().splitlines()[-1]) == expected, err
    deadline = time.monotonic() + 5
    while len(local) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local == expected
