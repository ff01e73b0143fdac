"""A provider with no API key is "not configured" unless the local fake provider was chosen explicitly
(USE_FAKE_PROVIDER): its jobs fail at once naming the variable to set, fallback chains skip it, it is shown
as not configured and it does not count against the operation mode. Never the fake's echo in its place.

The session chooses the fake (tests/conftest.py); these tests turn that choice off for their workers and
settings and give Anthropic a key whose base URL is the session's fake provider (so it is "real" here).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess, start_worker, ultra_cli
from sqlalchemy import delete
from status_server import StatusServer

from ultra_tasks import LLMProviderHealthCheck, SystemOperationMode, keys, submit
from ultra_tasks.config import load_settings
from ultra_tasks.errors import JobFailedError, ProviderNotConfiguredError
from ultra_tasks.health.checks import ProviderProbe
from ultra_tasks.health.runner import check_and_evaluate
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry
from ultra_tasks.resilience.breaker import breaker_redis
from ultra_tasks.resilience.chains import ChainEntry
from ultra_tasks.resilience.pipeline import ChainFailed, ResilientCaller
from ultra_tasks.resilience.retry import AttemptBudget

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers")]


def _only_anthropic_keyed() -> dict[str, str]:
    """No OPENAI_API_KEY, no USE_FAKE_PROVIDER; Anthropic keyed, at the session's fake provider."""
    return {
        "USE_FAKE_PROVIDER": "0",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": os.environ["FAKE_PROVIDER_URL"],
    }


@pytest.fixture(scope="module")
def keyless_openai_worker(redis_client: object, database: str) -> Iterator[WorkerProcess]:
    worker = start_worker(concurrency=2, env=_only_anthropic_keyed())
    yield worker
    worker.stop()


def test_a_job_for_a_provider_without_key_fails_at_once_naming_the_missing_variable(
    keyless_openai_worker: WorkerProcess, fake_provider: Any
) -> None:
    # Given a worker with no OPENAI_API_KEY and the fake not chosen
    # When a job asks for an OpenAI model, with no fallback
    handle = submit(f"no key {uuid.uuid4().hex}", model="gpt-4o-mini", fallback=False)
    # Then it fails, permanently and at once, saying which variable to set ...
    started = time.monotonic()
    with pytest.raises(JobFailedError) as failed:
        handle.result(timeout=60)
    assert time.monotonic() - started < 30
    error = failed.value.error
    assert error["type"] == "ProviderNotConfiguredError" and error["kind"] == "permanent"
    assert error["missing"] == "OPENAI_API_KEY" and "OPENAI_API_KEY" in error["message"]
    assert error["provider_calls"] == 0
    # ... and nothing was sent anywhere: no echo from the fake stands in for the real API
    assert fake_provider.stats()["by_api"]["openai"] == 0


def test_a_fallback_chain_skips_a_provider_without_key_and_the_next_entry_answers(
    keyless_openai_worker: WorkerProcess, fake_provider: Any
) -> None:
    # The default chain of gpt-4o-mini is openai:gpt-4o-mini, then anthropic:claude-3-5-haiku-latest
    result = submit(f"skip it {uuid.uuid4().hex}", model="gpt-4o-mini").result(timeout=60)
    assert (result.provider, result.model) == ("anthropic", "claude-3-5-haiku-latest")
    assert result.fallback_used is True and result.attempts == 1
    assert result.attempt_errors == [
        {
            "entry": "openai:gpt-4o-mini",
            "skipped": True,
            "reason": "not configured: OPENAI_API_KEY is not set",
            "missing": "OPENAI_API_KEY",
        }
    ]
    assert fake_provider.stats()["by_api"] == {"openai": 0, "anthropic": 1}


def test_a_chain_of_providers_none_configured_fails_with_the_first_missing_variable(
    fake_provider: Any,
) -> None:
    settings = load_settings(use_fake_provider=False, anthropic_api_key=None)
    caller = ResilientCaller(ProviderRegistry(settings), settings, breaker_redis())
    request = LLMRequest("gpt-4o", (ChatMessage("user", "hello"),), 16)
    chain = [ChainEntry("openai", "gpt-4o"), ChainEntry("anthropic", "claude-3-5-sonnet-latest")]
    with pytest.raises(ChainFailed) as failed:
        caller.call(request, chain, AttemptBudget(5))
    assert isinstance(failed.value.error, ProviderNotConfiguredError)
    assert failed.value.error.variable == "OPENAI_API_KEY"
    assert [a["missing"] for a in failed.value.attempts] == ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
    assert fake_provider.stats()["total"] == 0


@pytest.fixture
def fresh_components(database: str, redis_client: Any) -> Iterator[None]:
    """No component reported before or after: the mode is evaluated from this test's checks alone."""
    from ultra_tasks.db.engine import session_scope
    from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord

    def wipe() -> None:
        with session_scope() as s:
            for model in (ComponentStatus, ModeTransition, OperationModeRecord):
                s.execute(delete(model))
        redis_client.delete(keys.mode_current())

    wipe()
    yield
    wipe()


def test_a_provider_without_key_is_shown_not_configured_and_leaves_the_mode_normal(
    fresh_components: None, fake_provider: Any, tmp_path: Path
) -> None:
    # Given OpenAI without a key (fake not chosen) and Anthropic keyed and answering
    os.environ.update(_only_anthropic_keyed())
    registry = ProviderRegistry(load_settings())
    checks = [
        LLMProviderHealthCheck(name, ProviderProbe(name, min_interval_s=0, registry=registry))
        for name in ("openai", "anthropic")
    ]
    # When the health checks run and the mode is evaluated
    summary = check_and_evaluate(SystemOperationMode(), checks)
    # Then OpenAI is not configured, never probed, and no reason to degrade: the mode stays NORMAL
    assert summary["checks"] == {"llm_provider_openai": "not-configured", "llm_provider_anthropic": "ok"}
    assert summary["mode"] == "NORMAL"
    assert fake_provider.stats()["by_api"]["openai"] == 0
    # And the fleet snapshot (`ultra status --json`, /status.json) and `ultra status` show it so
    out = ultra_cli("status", "--json")
    assert out.returncode == 0, out.stderr
    components = {c["component"]: c for c in json.loads(out.stdout)["components"]}
    openai = components["llm_provider_openai"]
    assert openai["status"] == "not-configured" and "OPENAI_API_KEY" in openai["reason"]
    assert json.loads(out.stdout)["mode"]["reasons"] == []
    shown = ultra_cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "not-configured" in shown.stdout and "OPENAI_API_KEY" in shown.stdout
    # And the status page, as a browser gets it
    server = StatusServer(tmp_path).start()
    try:
        status, _, body = server.get("/")
    finally:
        server.stop()
    assert status == 200
    row = re.search(r'<tr[^>]*data-component="llm_provider_openai".*?</tr>', body.decode())
    assert row is not None, body.decode()[-3000:]
    assert '<td class="status">not-configured</td>' in row[0] and "OPENAI_API_KEY" in row[0], row[0]
