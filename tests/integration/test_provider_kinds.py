"""Kinds of provider: Azure's client as the SDK builds it, and a kind added by one module showing up in
health checks, status, preload and the job path with no other edit."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from ultra_tasks.config import load_settings, reset_settings
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.deployments import forget_catalogs, load_file
from ultra_tasks.providers.kinds import all_kinds, sdk_modules, unregister_kind
from ultra_tasks.providers.registry import build_provider

pytestmark = pytest.mark.timeout(60)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, dict(self.headers), body))
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_azure_deployment_builds_an_azure_openai_client_with_its_api_version_and_deployment_name(
    tmp_path: Path, recorder: str
) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "deployments:\n"
        "  - name: azure-eu\n"
        "    kind: azure_openai\n"
        "    models: [gpt-4o]\n"
        f"    base_url: {recorder}\n"
        "    api_key: env:T17_AZURE_KEY\n"
        "    options: {api_version: '2024-10-21', deployment: gpt4o-eu}\n"
    )
    deployment = load_file(path, load_settings(), environ={"T17_AZURE_KEY": "azure-secret"}).by_name[
        "azure-eu"
    ]
    provider = build_provider(deployment, 1)
    assert isinstance(provider.client(), openai.AzureOpenAI)  # type: ignore[attr-defined]
    response = provider.complete(LLMRequest("gpt-4o", (ChatMessage("user", "hi"),), 4), timeout=5)
    assert response.text == "hi" and response.provider == "azure-eu"
    [(url, headers, body)] = _Recorder.seen
    assert url == "/openai/deployments/gpt4o-eu/chat/completions?api-version=2024-10-21"
    assert {k.lower(): v for k, v in headers.items()}["api-key"] == "azure-secret"
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.fixture
def echo_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A kind registered by one module (tests/integration/echo_kind.py) and a deployments file using it."""
    import tests.integration.echo_kind  # noqa: F401 - registers the kind

    path = tmp_path / "providers.yaml"
    path.write_text(
        "deployments:\n"
        "  - {name: echo-1, kind: echo_kind, models: ['echo-*']}\n"
        "  - {name: echo-2, kind: echo_kind, models: ['echo-*'], weight: 2}\n"
    )
    monkeypatch.setenv("PROVIDERS_FILE", str(path))
    reset_settings()
    forget_catalogs()
    yield "echo_kind"
    unregister_kind("echo_kind")
    forget_catalogs()


def test_a_kind_registered_by_one_module_appears_in_health_checks_status_preload_and_jobs(
    echo_kind: str, redis_client: Any
) -> None:
    from ultra_tasks.health.runner import default_checks, run_checks
    from ultra_tasks.providers.registry import ProviderRegistry
    from ultra_tasks.providers.status import deployment_rows
    from ultra_tasks.resilience.breaker import breaker_redis
    from ultra_tasks.resilience.chains import chain_for
    from ultra_tasks.resilience.pipeline import ResilientCaller
    from ultra_tasks.resilience.retry import AttemptBudget

    assert echo_kind in [k.name for k in all_kinds()]
    # preload: a worker imports every kind's modules before its first job
    assert "tests.integration.echo_kind" in sdk_modules()
    # health: each deployment of the kind is probed on its own
    settings = load_settings()
    checks = [c for c in default_checks(settings) if c.component_type == "llm_provider"]
    assert [c.name for c in checks] == ["llm_provider_echo-1", "llm_provider_echo-2"]
    results = asyncio.run(run_checks(checks))
    assert {r.status for r in results.values()} == {"ok"}
    # status: listed with its kind and models
    rows = deployment_rows(settings)
    assert [(r["name"], r["kind"], r["models"]) for r in rows] == [
        ("echo-1", "echo_kind", ["echo-*"]),
        ("echo-2", "echo_kind", ["echo-*"]),
    ]
    # the job path: routed, called, answered by one of its deployments
    request = LLMRequest("echo-small", (ChatMessage("user", "ping"),), 4)
    caller = ResilientCaller(ProviderRegistry(settings), settings, breaker_redis())
    outcome = caller.call(request, chain_for(request, settings), AttemptBudget(3))
    assert outcome.response.text == "echo-kind: ping" and outcome.response.provider in ("echo-1", "echo-2")
