"""docker-compose.yml: no container engine runs here, so check that every command names something real."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from ultra_tasks.cli import cli
from ultra_tasks.config import is_secret_field
from ultra_tasks.security import is_loopback
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
    assert f"127.0.0.1:{port}:{port}" in status[0]["ports"]
    probe = " ".join(status[0]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/healthz" in probe


# --- secure by default ---------------------------------------------------------------------------------
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<rest>[^}]*)\}")
_URL_PASSWORD = re.compile(r"\w+(?:\+\w+)?://[^:/@\s]*:(?P<password>\$\{[^}]*\}|[^@\s]*)@")
_CREDENTIALS = ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "STATUS_TOKEN", "ULTRA_SECRET_KEY")


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port; the address is "" when none is given."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # long syntax
            out.append((str(entry.get("host_ip", "")), str(entry.get("published", ""))))
            continue
        parts = str(entry).rsplit(":", 2)
        out.append((parts[0], parts[1]) if len(parts) == 3 else ("", parts[0]))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_published_port_listens_on_loopback_only(services: dict[str, Any]) -> None:
    published = {name: _published(s) for name, s in services.items() if s.get("ports")}
    assert {"flower", "status"} <= set(published), "Flower and the status page are published"
    for name, ports in published.items():
        for address, port in ports:
            assert address and is_loopback(address), f"{name} publishes port {port} on {address or 'all'}"


def test_no_credential_has_a_default_each_is_required_from_the_environment() -> None:
    text = COMPOSE.read_text()
    used = {m["name"]: m for m in _VARIABLE.finditer(text)}
    for name in _CREDENTIALS:
        assert name in used, f"{name} is not taken from the environment"
        assert used[name]["op"] == ":?", f"{name} must be required (${{{name}:?message}}), not defaulted"
    for m in _VARIABLE.finditer(text):  # any other secret may default to empty (= not configured) only
        if is_secret_field(m["name"]) and m["op"] in (":-", "-"):
            assert m["rest"] == "", f"{m['name']} has a default value"
    assert "ultra:ultra" not in text, "the local stack's Flower credentials are no default here"


def test_no_service_sets_a_literal_password_or_secret(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key, value in _environment(service).items():
            if is_secret_field(key) or key.endswith("PASSWORD"):
                assert _VARIABLE.fullmatch(value), f"{name}: {key} is a literal value"
            for url in _URL_PASSWORD.finditer(value):
                assert _VARIABLE.fullmatch(url["password"]), f"{name}: {key} holds a literal password"


def test_flower_and_status_page_run_behind_their_guards(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["command"][:2] == ["ultra", "flower"], "`ultra flower` checks its credentials"
    assert _VARIABLE.fullmatch(_environment(flower)["FLOWER_BASIC_AUTH"])
    status = services["status"]
    assert _environment(status)["STATUS_TOKEN"].startswith("${STATUS_TOKEN:?")
    fake = services["fake-provider"]
    assert "--allow-remote" in fake["command"] and not fake.get("ports"), "fake provider: network only"


def test_workers_beat_and_producers_get_the_job_signing_key(services: dict[str, Any]) -> None:
    for name, service in services.items():
        command = " ".join(service.get("command", []))
        if command.startswith(
            ("ultra worker", "ultra db", "celery -A ultra_tasks beat", "ultra status", "ultra api")
        ):
            assert _environment(service).get("ULTRA_SECRET_KEY", "").startswith("${ULTRA_SECRET_KEY:?"), name
