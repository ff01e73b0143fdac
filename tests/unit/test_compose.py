"""docker-compose.yml: no container engine runs here, so check that every command names something real."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from ultra_tasks.cli import cli
from workers import roles

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _ultra_command_exists(argv: list[str]) -> None:
    group: Any = typer.main.get_command(cli)
    words = argv[1:]
    while words and hasattr(group, "commands") and words[0] in group.commands:
        group = group.commands[words.pop(0)]
    assert not hasattr(group, "commands"), f"`{' '.join(argv)}` does not name an ultra command"
    if group.name == "worker":
        assert words[0] in roles(), f"unknown worker role in `{' '.join(argv)}`"


def _celery_app_exists(argv: list[str]) -> None:
    from celery.app.utils import find_app

    app_name = argv[argv.index("-A") + 1]
    assert find_app(app_name).main == "ultra_tasks"
    assert argv[argv.index("-A") + 2] in {"worker", "beat", "flower"}


def test_every_service_command_names_a_real_module_or_entry_point(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        argv = service.get("command")
        if argv is None or service.get("image", "").startswith(("redis", "postgres")):
            continue
        assert isinstance(argv, list), f"{name}: use the exec (list) form of command"
        if argv[0] == "ultra":
            _ultra_command_exists(argv)
        elif argv[0] == "celery":
            _celery_app_exists(argv)
        elif argv[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(argv[2]) is not None, f"{name}: no module {argv[2]}"
        else:
            pytest.fail(f"{name}: unrecognised command {argv}")
        checked += 1
    assert checked >= 6


def test_stack_has_every_role_beat_flower_and_fake_provider(services: dict[str, Any]) -> None:
    commands = {" ".join(s.get("command", [])) for s in services.values()}
    for role in roles():
        assert f"ultra worker {role}" in commands
    assert any(" beat " in f" {c} " for c in commands)
    assert any(" flower" in c for c in commands)
    assert any(c.startswith("ultra fake-provider") for c in commands)


def test_redis_keeps_queued_jobs_aof_on_and_no_eviction(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_every_service_has_a_healthcheck_and_only_one_shot_jobs_disable_it(services: dict[str, Any]) -> None:
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert isinstance(healthcheck, dict), f"{name} has no healthcheck"
        if healthcheck.get("disable"):
            # a job that runs once and exits has no health to check; its success gates its dependants
            assert service.get("restart") == "no", f"{name} disables its healthcheck but keeps running"
            continue
        test = healthcheck.get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
        assert healthcheck.get("interval") and healthcheck.get("retries"), f"{name}: interval and retries"


def test_status_page_service_serves_the_status_server_and_is_probed_on_healthz(
    services: dict[str, Any],
) -> None:
    status = [s for s in services.values() if s.get("command", [])[:2] == ["ultra", "status-server"]]
    assert len(status) == 1
    command = status[0]["command"]
    port = command[command.index("--port") + 1]
    assert f"{port}:{port}" in status[0]["ports"]
    probe = " ".join(status[0]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in probe
