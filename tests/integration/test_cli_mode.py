"""`ultra mode ...` and `ultra health run` against the real services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import ultra_cli as ultra

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("database", "redis_client")]


def test_operator_sets_shows_and_clears_a_mode_override() -> None:
    assert ultra("mode", "set", "degraded", "--for", "600").returncode == 0
    shown = json.loads(ultra("mode", "show", "--json").stdout)
    assert shown["mode"] == "DEGRADED" and shown["reasons"][0]["component"] == "operator"
    assert ultra("mode", "clear").returncode == 0
    assert json.loads(ultra("mode", "show", "--json").stdout)["mode"] in ("NORMAL", "DEGRADED", "EMERGENCY")
    bad = ultra("mode", "set", "panic")
    assert bad.returncode == 2 and "unknown mode 'panic'" in bad.stderr


def test_health_run_reports_each_check_and_exits_nonzero_unless_normal(
    llm_worker: Any, fake_provider: Any
) -> None:
    out = ultra("health", "run", "--json")
    summary = json.loads(out.stdout)
    assert set(summary["checks"]) >= {
        "redis",
        "broker",
        "database",
        "workers",
        "queues",
        "disk_cache",
        "llm_provider_openai",
        "llm_provider_anthropic",
    }
    assert all(status == "ok" for status in summary["checks"].values()), summary
    assert out.returncode == (0 if summary["mode"] == "NORMAL" else 1)
