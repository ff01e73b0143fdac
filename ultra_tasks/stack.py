"""Run the whole stack on one machine: fake provider (chosen explicitly when no API key is set), worker
roles, beat, Flower and the status page.

``ultra up`` is what the README's first command ends in. Children are plain subprocesses, logged under
``./var/log/``; Ctrl-C (or SIGTERM) stops them all, warm shutdown first so running jobs finish or go back
to the queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ultra_tasks.config import Settings
from ultra_tasks.providers.deployments import catalog

#: how long to wait for children to come up and to stop (seconds)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]


def uses_fake_provider(settings: Settings) -> bool:
    """Whether some deployment sends its calls to the local fake provider (so `ultra up` starts it)."""
    fake = settings.fake_provider_url.rstrip("/")
    return any(d.is_fake and (d.base_url or "").startswith(fake) for d in catalog(settings).deployments)


def choose_providers() -> tuple[Settings, list[str]]:
    """The settings a local stack runs with, and what to tell the user about its providers.

    With no deployments file, no API key set and USE_FAKE_PROVIDER not given either way, the local fake
    provider is chosen explicitly: USE_FAKE_PROVIDER=1 goes into this process's environment, which every
    child inherits. A key for one provider only leaves the other not configured, never faked."""
    from ultra_tasks.config import get_settings, reset_settings

    settings = get_settings()
    notes: list[str] = []
    path = settings.effective_providers_file
    if path is not None:
        # the file names every deployment, the fake included if it wants one: nothing to choose
        notes.append(f"provider deployments from {path}")
    any_key = settings.openai_api_key or settings.anthropic_api_key or settings.openai_compat_api_key
    if path is None and not any_key and "use_fake_provider" not in settings.model_fields_set:
        os.environ["USE_FAKE_PROVIDER"] = "1"
        reset_settings()
        settings = get_settings()
        notes.append(
            "no API key set (OPENAI_API_KEY, ANTHROPIC_API_KEY): choosing the local fake provider "
            f"at {settings.fake_provider_url} (USE_FAKE_PROVIDER=1)"
        )
    for deployment in catalog(settings).deployments:
        if not deployment.configured and deployment.models:
            notes.append(
                f"{deployment.name}: not configured ({deployment.missing} is not set); its jobs fail at once"
            )
    return settings, notes


def plan(settings: Settings) -> list[Child]:
    """The processes of a local stack, in start order."""
    from workers import roles

    logs = settings.var_dir / "log"
    py = sys.executable
    children: list[Child] = []
    if uses_fake_provider(settings):
        from urllib.parse import urlsplit

        parts = urlsplit(settings.fake_provider_url)
        children.append(
            Child(
                "fake-provider",
                [
                    py,
                    "-m",
                    "ultra_tasks.cli",
                    "fake-provider",
                    "--host",
                    parts.hostname or "127.0.0.1",
                    "--port",
                    str(parts.port or 8787),
                ],
                logs / "fake-provider.log",
            )
        )
    for role in roles().values():
        children.append(Child(f"worker-{role.name}", role.argv(settings), logs / f"worker-{role.name}.log"))
    schedule = settings.var_dir / "celerybeat-schedule"
    children.append(
        Child(
            "beat",
            [
                py,
                "-m",
                "celery",
                "-A",
                "ultra_tasks",
                "beat",
                "-s",
                str(schedule),
                "--loglevel",
                settings.log_level.upper(),
            ],
            logs / "beat.log",
        )
    )
    children.append(
        Child(
            "flower",
            # `ultra flower` checks its credentials against the address before it execs Flower
            [
                py,
                "-m",
                "ultra_tasks.cli",
                "flower",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.flower_port),
            ],
            logs / "flower.log",
        )
    )
    children.append(
        Child(
            "status",
            [
                py,
                "-m",
                "ultra_tasks.cli",
                "status-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.status_port),
            ],
            logs / "status.log",
        )
    )
    children.append(
        Child(
            "api",
            # the OpenAI-compatible HTTP API; loopback, so it needs no TLS (ultra_tasks/security.py)
            [py, "-m", "ultra_tasks.cli", "api", "--host", "127.0.0.1", "--port", str(settings.api_port)],
            logs / "api.log",
        )
    )
    return children


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def live_worker_names(timeout: float = 1.0) -> set[str]:
    from ultra_tasks.celery_app import app

    replies = app.control.ping(timeout=timeout) or []
    return {name for reply in replies for name in reply}


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = plan(settings)

    def start(self, echo: Callable[[str], None] = print) -> None:
        env = dict(os.environ)
        # Flower reads its basic auth from the environment so the secret stays out of `ps` output.
        env["FLOWER_BASIC_AUTH"] = self.settings.flower_basic_auth
        env.setdefault("PYTHONUNBUFFERED", "1")
        for child in self.children:
            child.start(env)
            echo(
                f"started {child.name:<14} pid {child.proc.pid if child.proc else '?'}  log {child.log_path}"
            )
            if child.name == "fake-provider":
                from ultra_tasks.providers.fake_server import FakeProviderControl

                control = FakeProviderControl(self.settings.fake_provider_url)
                wait_until(control.healthy, START_TIMEOUT_S, "fake provider")
        wait_until(self._workers_ready, START_TIMEOUT_S, "workers")

    def _workers_ready(self) -> bool:
        dead = [c.name for c in self.children if not c.alive()]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited early; see {self.settings.var_dir / 'log'}")
        names = live_worker_names()
        return any(n.startswith("llm@") for n in names) and any(n.startswith("ops@") for n in names)

    def check_alive(self) -> list[str]:
        return [c.name for c in self.children if not c.alive()]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
