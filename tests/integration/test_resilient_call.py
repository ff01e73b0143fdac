"""The resilient provider pipeline against the fake provider over HTTP (official SDKs) and the real Redis:
fallback chains, retries within one budget, Retry-After, quota marks, adaptive timeouts, rate limits."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, keys
from ultra_tasks.config import load_settings
from ultra_tasks.errors import (
    ContentPolicyError,
    ErrorKind,
    NoProviderAvailableError,
    ProviderBadRequestError,
)
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry
from ultra_tasks.resilience.breaker import breaker_redis
from ultra_tasks.resilience.chains import ChainEntry, chain_for, map_to_anthropic_model
from ultra_tasks.resilience.pipeline import ChainFailed, ResilientCaller
from ultra_tasks.resilience.retry import AttemptBudget

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client")]

OPENAI = ChainEntry("openai", "gpt-4o")
ANTHROPIC = ChainEntry("anthropic", "claude-3-5-sonnet-latest")
COMPAT = ChainEntry("openai_compat", "llama-3-70b")


class Harness:
    """A pipeline with its own breakers (unique names) and a sleep that records instead of waiting."""

    def __init__(self, **overrides: Any) -> None:
        fake = os.environ["FAKE_PROVIDER_URL"]
        self.settings = load_settings(openai_compat_base_url=f"{fake}/v1", **overrides)
        self.sleeps: list[float] = []
        prefix = uuid.uuid4().hex[:6]
        self.breakers: dict[str, CircuitBreaker] = {}

        def breaker(name: str) -> CircuitBreaker:
            if name not in self.breakers:
                self.breakers[name] = CircuitBreaker(
                    f"{prefix}-{name}", failure_threshold=3, reset_timeout=60
                )
            return self.breakers[name]

        self.registry = ProviderRegistry(self.settings)
        self.caller = ResilientCaller(
            self.registry, self.settings, breaker_redis(), sleep=self.sleeps.append, breaker_factory=breaker
        )

    def call(
        self, chain: list[ChainEntry], prompt: str = "hello", budget: int | None = None, **kw: Any
    ) -> Any:
        request = LLMRequest(chain[0].model, (ChatMessage("user", prompt),), 32, **kw)
        return self.caller.call(
            request, chain, AttemptBudget(budget or self.settings.effective_attempt_budget)
        )

    def close(self) -> None:
        self.registry.close()


@pytest.fixture
def harness() -> Any:
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        h = Harness(**overrides)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _calls(fake: Any, api: str) -> int:
    return int(fake.stats()["by_api"][api])


def test_primary_503_is_served_by_the_fallback_then_its_open_breaker_is_skipped_without_a_call(
    harness: Any, fake_provider: Any
) -> None:
    h = harness()
    fake_provider.add_fault("status", api="openai", status=503)
    first = h.call([OPENAI, ANTHROPIC])
    assert first.entry == ANTHROPIC and first.fallback_used
    assert [a["status_code"] for a in first.attempts] == [503, 503, 503]  # retried, then fell back
    assert h.breakers["openai"].state == CircuitBreaker.OPEN
    calls = _calls(fake_provider, "openai")
    started = time.monotonic()
    second = h.call([OPENAI, ANTHROPIC])
    assert second.entry == ANTHROPIC
    assert _calls(fake_provider, "openai") == calls  # skipped: no call, no timeout paid
    assert time.monotonic() - started < 1
    assert second.attempts[0] == {"entry": "openai:gpt-4o", "skipped": True, "reason": "circuit breaker open"}


def test_retry_after_from_a_429_is_waited_before_the_next_attempt(harness: Any, fake_provider: Any) -> None:
    h = harness()
    fake_provider.add_fault("status", api="openai", status=429, retry_after=1.5, times=1)
    outcome = h.call([OPENAI, ANTHROPIC])
    assert outcome.entry == OPENAI  # the retry succeeded
    assert h.sleeps == [1.5]
    assert outcome.attempts[0]["kind"] == ErrorKind.RATE_LIMITED.value


def test_retry_after_beyond_the_cap_moves_down_the_chain_at_once(harness: Any, fake_provider: Any) -> None:
    h = harness(retry_after_max=5)
    fake_provider.add_fault("status", api="openai", status=429, retry_after=120)
    outcome = h.call([OPENAI, ANTHROPIC])
    assert outcome.entry == ANTHROPIC
    assert h.sleeps == []
    assert _calls(fake_provider, "openai") == 1


def test_bad_request_is_not_retried_and_does_not_fall_back(harness: Any, fake_provider: Any) -> None:
    h = harness()
    fake_provider.add_fault("status", api="openai", status=400, message="unsupported parameter")
    with pytest.raises(ChainFailed) as info:
        h.call([OPENAI, ANTHROPIC])
    assert isinstance(info.value.error, ProviderBadRequestError)
    assert "unsupported parameter" in str(info.value.error)
    assert fake_provider.stats()["by_api"] == {"openai": 1, "anthropic": 0}


def test_quota_exhausted_is_not_retried_and_the_provider_is_skipped_until_its_reset(
    harness: Any, fake_provider: Any
) -> None:
    h = harness()
    h.caller.quota.clear("openai")
    fake_provider.add_fault("quota", api="openai", reset_after=1.5)
    assert h.call([OPENAI, ANTHROPIC]).entry == ANTHROPIC
    assert _calls(fake_provider, "openai") == 1  # not retried
    assert h.call([OPENAI, ANTHROPIC]).entry == ANTHROPIC
    assert _calls(fake_provider, "openai") == 1  # skipped, fleet-wide mark in Redis
    other = harness()  # another process's view reads the same mark
    assert other.caller.quota.blocked_for("openai") > 0
    fake_provider.clear_faults()
    time.sleep(1.6)
    assert h.call([OPENAI, ANTHROPIC]).entry == OPENAI  # after the reset it states


def test_when_no_entry_can_be_called_the_job_is_deferred_not_failed(harness: Any, fake_provider: Any) -> None:
    h = harness()
    h.caller.quota.clear("anthropic")
    fake_provider.add_fault("quota", api="anthropic", reset_after=30)
    with pytest.raises(NoProviderAvailableError) as info:
        h.call([ANTHROPIC])
    assert 25 < info.value.retry_after <= 30
    h.caller.quota.clear("anthropic")


def test_a_rate_limit_beyond_the_wait_bound_defers_instead_of_failing(
    harness: Any, fake_provider: Any
) -> None:
    model = f"gpt-4o-{uuid.uuid4().hex[:4]}"
    h = harness(provider_rate_limits={"openai": {"rpm": 1}}, rate_limit_max_wait=5)
    entry = ChainEntry("openai", model)
    breaker_redis().delete(keys.rate_limit("openai", "rpm"))
    assert h.call([entry]).entry == entry  # the burst of one
    with pytest.raises(NoProviderAvailableError) as info:
        h.call([entry])  # the next permit is a minute away: more than the 5 s bound
    assert 50 < info.value.retry_after <= 60
    assert h.sleeps == []
    assert _calls(fake_provider, "openai") == 1
    breaker_redis().delete(keys.rate_limit("openai", "rpm"))


def test_a_chain_of_three_with_three_retries_each_makes_no_more_calls_than_the_budget(
    harness: Any, fake_provider: Any
) -> None:
    h = harness(retry_max_attempts=3, job_attempt_budget=5)
    fake_provider.add_fault("status", status=503)  # every provider, every model
    with pytest.raises(ChainFailed) as info:
        h.call([OPENAI, ANTHROPIC, COMPAT])
    assert fake_provider.stats()["total"] == 5  # not 9
    assert [a["entry"] for a in info.value.attempts] == ["openai:gpt-4o"] * 3 + [
        "anthropic:claude-3-5-sonnet-latest"
    ] * 2
    assert all(a["status_code"] == 503 for a in info.value.attempts)


def test_a_job_whose_budget_is_spent_makes_no_call_and_says_why(harness: Any, fake_provider: Any) -> None:
    h = harness()
    request = LLMRequest("gpt-4o", (ChatMessage("user", "again"),), 16)
    with pytest.raises(ChainFailed, match="whole attempt budget"):
        h.caller.call(request, [OPENAI, ANTHROPIC], AttemptBudget(0))
    assert fake_provider.stats()["total"] == 0


def test_input_too_large_for_a_model_falls_back_to_a_larger_context_model(
    harness: Any, fake_provider: Any
) -> None:
    h = harness()
    small = ChainEntry("openai", "gpt-3.5-turbo")  # 16k tokens
    outcome = h.call([small, ANTHROPIC], prompt="word " * 20_000)  # ~25k tokens
    assert outcome.entry == ANTHROPIC
    assert outcome.attempts == [
        {
            "entry": "openai:gpt-3.5-turbo",
            "skipped": True,
            "reason": "input larger than the model's context window",
        }
    ]
    assert _calls(fake_provider, "openai") == 0


def test_content_policy_refusal_falls_back_to_another_provider(harness: Any, fake_provider: Any) -> None:
    h = harness()
    fake_provider.add_fault(
        "status",
        api="openai",
        status=400,
        message="Your request was rejected as a result of our safety system (content_policy)",
    )
    outcome = h.call([OPENAI, ANTHROPIC])
    assert outcome.entry == ANTHROPIC
    assert outcome.attempts[0]["type"] == ContentPolicyError.__name__


def test_timeout_adapts_to_rising_latency_within_its_bounds(harness: Any, fake_provider: Any) -> None:
    h = harness(
        adaptive_timeout_min_samples=5,
        adaptive_timeout_factor=2,
        adaptive_timeout_min=0.3,
        adaptive_timeout_max=2.5,
        provider_timeout=5,
        retry_max_attempts=1,
        job_attempt_budget=1,
    )
    h.caller.timeouts.refresh_s = 0  # recompute on every call for the test
    model = f"gpt-4o-{uuid.uuid4().hex[:4]}"
    entry = ChainEntry("openai", model)
    assert h.caller.timeouts.timeout("openai", model) == 5  # the default until there is history
    fake_provider.add_fault("latency", model=model, ms=100)
    for _ in range(6):
        h.call([entry])
    fast = h.caller.timeouts.timeout("openai", model)
    assert 0.3 <= fast < 1.0  # about 2 x p95 of ~0.1 s, not below the floor
    fake_provider.clear_faults()
    fake_provider.add_fault("latency", model=model, ms=900)
    outcomes = []
    for _ in range(12):
        try:
            h.call([entry])
            outcomes.append("ok")
        except ChainFailed:
            outcomes.append("timeout")
    grown = h.caller.timeouts.timeout("openai", model)
    assert outcomes[0] == "timeout" and outcomes[-1] == "ok"  # it adapted
    assert 0.9 < grown <= 2.5  # within the ceiling


def test_default_chain_maps_between_provider_tiers() -> None:
    settings = load_settings()
    request = LLMRequest("gpt-4o-mini", (ChatMessage("user", "x"),), 16)
    assert [str(e) for e in chain_for(request, settings)] == [
        "openai:gpt-4o-mini",
        "anthropic:claude-3-5-haiku-latest",
    ]
    assert [str(e) for e in chain_for(request, settings, fallback=False)] == ["openai:gpt-4o-mini"]
    assert map_to_anthropic_model("gpt-4o") == "claude-3-5-sonnet-latest"
    claude = LLMRequest("claude-3-5-haiku-latest", (ChatMessage("user", "x"),), 16)
    assert [str(e) for e in chain_for(claude, settings)] == [
        "anthropic:claude-3-5-haiku-latest",
        "openai:gpt-4o-mini",
    ]


def test_a_failed_half_open_probe_costs_the_job_no_attempt_and_parks_it_without_a_backoff(
    fake_provider: Any,
) -> None:
    settings = load_settings()
    sleeps: list[float] = []
    breaker = CircuitBreaker(f"probe-{uuid.uuid4().hex[:6]}", failure_threshold=1, reset_timeout=0.3)
    registry = ProviderRegistry(settings)
    caller = ResilientCaller(
        registry, settings, breaker_redis(), sleep=sleeps.append, breaker_factory=lambda name: breaker
    )
    fake_provider.add_fault("status", status=503)
    request = LLMRequest("gpt-4o", (ChatMessage("user", "probe"),), 32)
    try:
        # the first failure opens the breaker (threshold 1); the retry finds it open and the job parks
        first = AttemptBudget(5)
        with pytest.raises(NoProviderAvailableError):
            caller.call(request, [OPENAI], first)
        assert first.used == 1
        time.sleep(0.4)  # past the reset timeout: the next call is the half-open probe
        calls_before, sleeps_before = fake_provider.stats()["total"], len(sleeps)
        probe = AttemptBudget(5)
        with pytest.raises(NoProviderAvailableError):
            caller.call(request, [OPENAI], probe)
        assert fake_provider.stats()["total"] == calls_before + 1  # the probe reached the provider
        assert probe.used == 0  # it tested the provider for the breaker: the job is charged nothing
        assert len(sleeps) == sleeps_before  # and parks at once instead of sleeping a retry backoff
        assert breaker.state == CircuitBreaker.OPEN
    finally:
        registry.close()
