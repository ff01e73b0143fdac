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


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name == "migrate":
            continue
        assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"
