"""Two fake-provider processes as two deployments of one model, behind a real Celery worker: traffic
shared by weight, a failing deployment skipped before any fallback, both down → the fallback chain, a slow
one losing its traffic; and an openai_compatible deployment serving a model no built-in route knows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, submit
from ultra_tasks.config import reset_settings
from ultra_tasks.providers.deployments import forget_catalogs
from ultra_tasks.providers.fake_server import FakeProviderControl

pytestmark = pytest.mark.timeout(90)

MODEL = "gpt-4o-mini"
DEPLOYMENTS = ("fake-a", "fake-b", "fallback", "local")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_fakes() -> Iterator[tuple[FakeProviderControl, FakeProviderControl]]:
    """Two `ultra fake-provider` processes on ports of their own."""
    procs, controls = [], []
    for _ in range(2):
        port = _free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ultra_tasks.cli", "fake-provider", "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        controls.append(FakeProviderControl(f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + 30
    while not all(c.healthy() for c in controls):
        assert time.monotonic() < deadline, "fake providers did not start"
        time.sleep(0.1)
    yield controls[0], controls[1]
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def deployments(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    two_fakes: tuple[FakeProviderControl, FakeProviderControl],
    redis_client: Any,
) -> Iterator[tuple[FakeProviderControl, FakeProviderControl]]:
    """A deployments file: fake-a (weight 3) and fake-b (weight 1) serve the model, the session's fake
    serves the fallback and an unknown local model; breakers and faults start and end clean."""
    a, b = two_fakes
    session_fake = os.environ["FAKE_PROVIDER_URL"]
    path = tmp_path / "providers.yaml"
    path.write_text(
        f"""
deployments:
  - {{name: fake-a, kind: fake, models: ["{MODEL}"], base_url: "{a.url}/v1", weight: 3}}
  - {{name: fake-b, kind: fake, models: ["{MODEL}"], base_url: "{b.url}/v1", weight: 1}}
  - {{name: fallback, kind: fake, models: ["claude-*"], base_url: "{session_fake}/v1"}}
  - {{name: local, kind: openai_compatible, models: ["house-llm-*"], base_url: "{session_fake}/v1"}}
fallbacks:
  "{MODEL}": ["claude-3-5-haiku-latest"]
"""
    )
    monkeypatch.setenv("PROVIDERS_FILE", str(path))
    reset_settings()
    forget_catalogs()

    def clean() -> None:
        for control in (a, b):
            control.reset()
        for name in DEPLOYMENTS:
            CircuitBreaker(name).reset()

    clean()
    yield a, b
    clean()
    forget_catalogs()


def _run(count: int, label: str, model: str = MODEL) -> list[Any]:
    handles = [submit(f"{label} {i} {uuid.uuid4().hex}", model=model) for i in range(count)]
    return [h.result(timeout=60) for h in handles]


def _worker(worker_factory: Callable[..., Any]) -> None:
    worker_factory(concurrency=8, env={"PROVIDERS_FILE": os.environ["PROVIDERS_FILE"]})


def test_two_deployments_of_a_model_share_200_jobs_by_weight(
    deployments: tuple[FakeProviderControl, FakeProviderControl], worker_factory: Callable[..., Any]
) -> None:
    _worker(worker_factory)
    results = _run(200, "share")
    served = Counter(r.provider for r in results)
    # weights 3 and 1: 150 and 50, each within 20% of its share
    assert 120 <= served["fake-a"] <= 180 and 40 <= served["fake-b"] <= 60, served
    assert served["fake-a"] + served["fake-b"] == 200 and not any(r.fallback_used for r in results)
    a, b = deployments
    assert a.stats()["total"] == served["fake-a"] and b.stats()["total"] == served["fake-b"]
    # the fleet's metrics carry each deployment in their labels
    from prometheus_client import generate_latest

    from ultra_tasks.metrics.collector import fleet_registry

    deadline = time.monotonic() + 20
    wanted = [f'provider="{name}"' for name in ("fake-a", "fake-b")]
    while True:
        text = generate_latest(fleet_registry()).decode()
        latency = [line for line in text.splitlines() if line.startswith("ultra_job_latency_seconds_count")]
        if all(any(w in line for line in latency) for w in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(any(w in line for line in latency) for w in wanted), latency


def test_a_deployment_answering_503_is_skipped_the_other_serves_every_job_and_none_falls_back(
    deployments: tuple[FakeProviderControl, FakeProviderControl], worker_factory: Callable[..., Any]
) -> None:
    a, _ = deployments
    a.add_fault("status", status=503)
    _worker(worker_factory)
    results = _run(60, "one down")
    assert {r.provider for r in results} == {"fake-b"}
    assert not any(r.fallback_used for r in results) and {r.model for r in results} == {MODEL}


def test_with_both_deployments_down_the_fallback_chain_serves(
    deployments: tuple[FakeProviderControl, FakeProviderControl], worker_factory: Callable[..., Any]
) -> None:
    a, b = deployments
    a.add_fault("status", status=503)
    b.add_fault("status", status=503)
    _worker(worker_factory)
    results = _run(20, "both down")
    assert {(r.provider, r.model, r.fallback_used) for r in results} == {
        ("fallback", "claude-3-5-haiku-latest", True)
    }


def test_a_slow_deployment_loses_most_of_its_traffic_to_the_other(
    deployments: tuple[FakeProviderControl, FakeProviderControl], worker_factory: Callable[..., Any]
) -> None:
    a, _ = deployments
    a.add_fault("latency", ms=400)  # the heavier deployment turns slow
    _worker(worker_factory)
    results = _run(100, "slow")
    served = Counter(r.provider for r in results)
    # by weight it would take 75 of them
    assert served["fake-b"] >= 70, served


def test_an_openai_compatible_deployment_serves_a_model_the_built_in_routes_do_not_know(
    deployments: tuple[FakeProviderControl, FakeProviderControl], worker_factory: Callable[..., Any]
) -> None:
    _worker(worker_factory)
    handle = submit(f"local model {uuid.uuid4().hex}", model="house-llm-7b")
    result = handle.result(timeout=60)
    assert (result.provider, result.model, result.fallback_used) == ("local", "house-llm-7b", False)
    assert result.text.startswith("echo: local model")
    assert handle.record()["provider"] == "local"  # the job's record names the deployment that answered


def test_max_concurrency_holds_across_processes_the_overflow_going_to_another_deployment(
    tmp_path: Path, two_fakes: tuple[FakeProviderControl, FakeProviderControl], redis_client: Any
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ultra_tasks.config import load_settings
    from ultra_tasks.providers.base import ChatMessage, LLMRequest
    from ultra_tasks.providers.deployments import load_file
    from ultra_tasks.providers.registry import ProviderRegistry
    from ultra_tasks.resilience.breaker import breaker_redis
    from ultra_tasks.resilience.chains import ChainEntry
    from ultra_tasks.resilience.pipeline import ResilientCaller
    from ultra_tasks.resilience.retry import AttemptBudget

    a, b = two_fakes
    for control in (a, b):
        control.reset()
    a.add_fault("latency", ms=500)
    path = tmp_path / "providers.yaml"
    path.write_text(
        "deployments:\n"
        f"  - {{name: capped, kind: fake, models: [m], base_url: '{a.url}/v1', weight: 100,"
        " max_concurrency: 2}\n"
        f"  - {{name: spare, kind: fake, models: [m], base_url: '{b.url}/v1'}}\n"
    )
    settings = load_settings()
    catalog = load_file(path, settings)
    # two callers with routers of their own: as two worker processes, only Redis knows both's calls
    callers = [
        ResilientCaller(ProviderRegistry(settings, deployments=catalog), settings, breaker_redis())
        for _ in range(2)
    ]
    for caller in callers:
        caller.router.finished(catalog.by_name["capped"], 0.0)  # never seen slow: only its cap steers

    def call(i: int) -> str:
        request = LLMRequest("m", (ChatMessage("user", f"cap {i}"),), 4)
        outcome = callers[i % 2].call(request, [ChainEntry("*", "m")], AttemptBudget(3))
        return outcome.response.provider

    with ThreadPoolExecutor(8) as pool:
        served = Counter(pool.map(call, range(8)))
    try:
        assert a.stats()["max_in_flight"] <= 2 and served["capped"] >= 2 and served["spare"] >= 4, served
    finally:
        a.reset()


def test_a_model_whose_deployments_all_fail_spends_retry_max_attempts_then_falls_back(
    deployments: tuple[FakeProviderControl, FakeProviderControl],
) -> None:
    from ultra_tasks.config import get_settings
    from ultra_tasks.providers.base import ChatMessage, LLMRequest
    from ultra_tasks.providers.registry import ProviderRegistry
    from ultra_tasks.resilience.breaker import breaker_redis
    from ultra_tasks.resilience.chains import chain_for
    from ultra_tasks.resilience.pipeline import ResilientCaller
    from ultra_tasks.resilience.retry import AttemptBudget

    a, b = deployments
    a.add_fault("status", status=503)
    b.add_fault("status", status=503)
    settings = get_settings()
    caller = ResilientCaller(ProviderRegistry(settings), settings, breaker_redis(), sleep=lambda _: None)
    request = LLMRequest(MODEL, (ChatMessage("user", f"budget {uuid.uuid4().hex}"),), 4)
    budget = AttemptBudget(settings.effective_attempt_budget)
    outcome = caller.call(request, chain_for(request, settings), budget)
    failed = [e["entry"] for e in outcome.attempts]
    # each deployment once, then the model's last retry at one of them; the fallback keeps its share
    assert len(failed) == settings.retry_max_attempts and set(failed) == {
        f"fake-a:{MODEL}",
        f"fake-b:{MODEL}",
    }
    assert (outcome.response.provider, outcome.fallback_used) == ("fallback", True)
    assert budget.used == settings.retry_max_attempts + 1
