"""Resilience seen from jobs on real workers: fallbacks recorded, and fleet-wide rate limits held."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from ultra_tasks import submit

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers")]


def test_job_served_by_a_fallback_says_so_with_every_failed_attempt(
    worker_factory: Any, fake_provider: Any
) -> None:
    worker_factory(concurrency=2, env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "10"})
    fake_provider.add_fault("status", api="openai", status=503)
    handle = submit(f"fall back {uuid.uuid4().hex}", model="gpt-4o")
    result = handle.result(timeout=60)
    assert (result.provider, result.model) == ("anthropic", "claude-3-5-sonnet-latest")
    assert result.fallback_used is True
    assert result.attempts == 4  # three tries at the primary, one at the fallback
    assert [(e["entry"], e["status_code"], e["kind"]) for e in result.attempt_errors] == [
        ("openai:gpt-4o", 503, "transient")
    ] * 3
    record = handle.record()
    assert (record["provider"], record["model_used"], record["attempts"]) == (
        "anthropic",
        "claude-3-5-sonnet-latest",
        4,
    )
    assert record["result"]["fallback_used"] is True


def test_two_worker_processes_together_never_exceed_the_configured_requests_per_minute(
    worker_factory: Any, fake_provider: Any
) -> None:
    rpm = 120  # one request every 0.5 s, bursts of 2
    env = {"PROVIDER_RATE_LIMITS": json.dumps({"openai": {"rpm": rpm}})}
    worker_factory(concurrency=4, env=env)
    worker_factory(concurrency=4, env=env)
    handles = [
        submit(f"limited {i} {uuid.uuid4().hex}", model="gpt-4o-mini", fallback=False) for i in range(10)
    ]
    for h in handles:
        h.result(timeout=60)
    arrivals = sorted(fake_provider.stats()["arrivals"])
    assert len(arrivals) == 10
    interval, burst = 60 / rpm, 2
    # GCRA: within any window of length t, at most burst + t / interval requests
    for i, start in enumerate(arrivals):
        in_window = [a for a in arrivals[i:] if a - start < 1.0]
        assert len(in_window) <= burst + 1.0 / interval, arrivals
    # (arrivals are stamped by the provider: a first request slowed on its way by a busy machine shortens
    # the span it measures by that much)
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - burst) * interval - 0.25
    assert len({h.record()["worker"] for h in handles}) == 2


def test_a_jobs_own_chain_replaces_the_default_fallbacks(worker_factory: Any, fake_provider: Any) -> None:
    worker_factory(concurrency=2, env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "10"})
    fake_provider.add_fault("status", api="openai", status=503)
    chain = ["openai:gpt-4o", "anthropic:claude-3-5-haiku-latest"]  # the default would be sonnet
    result = submit(f"own chain {uuid.uuid4().hex}", model="gpt-4o", chain=chain).result(timeout=60)
    assert (result.provider, result.model, result.fallback_used) == (
        "anthropic",
        "claude-3-5-haiku-latest",
        True,
    )
