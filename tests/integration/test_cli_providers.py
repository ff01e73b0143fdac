"""`ultra providers list` and `ultra providers check [NAME]`, and deployments in `ultra status` and
/status.json, for a deployments file with one deployment that answers and one that cannot be reached."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ultra_cli
from ultra_tasks import CircuitBreaker

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client", "database")]


@pytest.fixture
def providers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    path = tmp_path / "providers.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: up-1, kind: fake, models: [gpt-4o-mini], weight: 2, rpm: 600,"
        f" base_url: '{os.environ['FAKE_PROVIDER_URL']}/v1'}}\n"
        f"  - {{name: down-1, kind: openai_compatible, models: [gpt-4o-mini],"
        f" base_url: 'http://127.0.0.1:{closed}/v1', api_key: env:T17_DOWN_KEY}}\n"
    )
    monkeypatch.setenv("PROVIDERS_FILE", str(path))
    monkeypatch.setenv("T17_DOWN_KEY", "sk-t17-never-printed-key")
    for name in ("up-1", "down-1"):
        CircuitBreaker(name).reset()
    return path


def test_providers_list_shows_each_deployment_with_kind_models_limits_and_breaker(
    providers_file: Path,
) -> None:
    out = ultra_cli("providers", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert (rows["up-1"]["kind"], rows["up-1"]["models"], rows["up-1"]["rpm"]) == (
        "fake",
        ["gpt-4o-mini"],
        600,
    )
    assert rows["down-1"]["kind"] == "openai_compatible" and rows["down-1"]["breaker"] == "closed"
    assert "sk-t17-never-printed-key" not in out.stdout + out.stderr


def test_providers_check_exits_1_when_a_deployment_fails_and_0_for_one_that_answers(
    providers_file: Path, fake_provider: Any
) -> None:
    every = ultra_cli("providers", "check", "--json")
    assert every.returncode == 1, every.stderr
    status = {r["name"]: r["status"] for r in json.loads(every.stdout)}
    assert status == {"up-1": "ok", "down-1": "critical"}
    one = ultra_cli("providers", "check", "up-1")
    assert one.returncode == 0 and "up-1" in one.stdout
    unknown = ultra_cli("providers", "check", "nobody")
    assert unknown.returncode == 2 and "nobody" in unknown.stderr


def test_status_shows_each_deployment_with_its_last_probe(providers_file: Path) -> None:
    ultra_cli("health", "run")  # down-1 fails its probe; up-1 still serves the model
    out = ultra_cli("status", "--json")
    deployments = {d["name"]: d for d in json.loads(out.stdout)["deployments"]}
    assert deployments["up-1"]["health"] == "ok" and deployments["down-1"]["health"] == "critical"
    reasons = [r["component"] for r in json.loads(out.stdout)["mode"]["reasons"]]
    # the model has a deployment up: one down is no reason to degrade (no worker runs here, which is)
    assert "llm_provider_down-1" not in reasons and "workers" in reasons
    assert "provider deployments" in ultra_cli("status").stdout
