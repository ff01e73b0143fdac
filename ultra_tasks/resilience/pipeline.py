"""One job's provider call, made resilient: walk the fallback chain; for each entry check its quota mark,
breaker and rate limit, then call it with an adaptive timeout and retries, inside one attempt budget for
the whole chain.

- An entry whose provider is not configured (no API key, no explicit USE_FAKE_PROVIDER) is skipped and
  recorded as such; if no other entry answers, the job fails with ``ProviderNotConfiguredError``.
- An entry that cannot be called now (breaker open, quota exhausted, rate limit beyond the wait bound)
  is skipped without paying a timeout. If nothing answered and such an entry exists, the job is deferred
  (``NoProviderAvailableError``) rather than failed.
- A permanent error ends the job at once (no retry, no fallback), except a context-window or
  content-policy refusal, which moves on to the next entry.
- Every provider call is one attempt, recorded with why it failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from ultra_tasks.config import Settings
from ultra_tasks.errors import (
    CircuitOpenException,
    ContentPolicyError,
    ContextWindowExceededError,
    ErrorKind,
    NoProviderAvailableError,
    PermanentProviderError,
    ProviderError,
    ProviderNotConfiguredError,
    ProviderTimeoutError,
    QuotaExhaustedError,
)
from ultra_tasks.model_names import tracked_model
from ultra_tasks.providers.base import LLMRequest, LLMResponse
from ultra_tasks.providers.registry import ProviderRegistry, UnconfiguredProvider
from ultra_tasks.resilience.breaker import CircuitBreaker, get_breaker
from ultra_tasks.resilience.chains import ChainEntry, context_window, estimated_tokens
from ultra_tasks.resilience.quota import QuotaGuard
from ultra_tasks.resilience.ratelimit import RateLimiter, RateLimitWaitTooLong
from ultra_tasks.resilience.retry import AttemptBudget, retrying
from ultra_tasks.resilience.timeouts import AdaptiveTimeouts


@dataclass
class CallOutcome:
    response: LLMResponse
    entry: ChainEntry
    fallback_used: bool
    attempts: list[dict[str, Any]] = field(default_factory=list)


class ChainFailed(Exception):
    """Every entry was tried or skipped; ``error`` is the last provider error, ``attempts`` the history."""

    def __init__(self, error: ProviderError, attempts: list[dict[str, Any]]) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


def breaker_name(provider: str, model: str, settings: Settings) -> str:
    if settings.circuit_breaker_scope == "provider":
        return provider
    return f"{provider}:{tracked_model(model)}"  # bounded: models beyond the cap share one breaker


class ResilientCaller:
    def __init__(
        self,
        registry: ProviderRegistry,
        settings: Settings,
        client: redis.Redis,
        *,
        sleep: Callable[[float], Any] = time.sleep,
        breaker_factory: Callable[[str], CircuitBreaker] = get_breaker,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.sleep = sleep
        self.breakers = breaker_factory
        self.quota = QuotaGuard(client, settings.quota_cooldown)
        self.rate_limits = RateLimiter(client, settings.provider_rate_limits)
        self.timeouts = AdaptiveTimeouts(client, settings)

    def call(self, request: LLMRequest, chain: list[ChainEntry], budget: AttemptBudget) -> CallOutcome:
        attempts: list[dict[str, Any]] = []
        unavailable: list[tuple[str, float]] = []
        last_error: ProviderError | None = None
        not_configured: list[ProviderNotConfiguredError] = []
        if budget.remaining <= 0:
            spent = PermanentProviderError(
                "the job has used its whole attempt budget (JOB_ATTEMPT_BUDGET) on earlier runs",
                provider=chain[0].provider if chain else "none",
                model=request.model,
            )
            raise ChainFailed(spent, attempts)
        for index, entry in enumerate(chain):
            if budget.remaining <= 0:
                break
            provider = self.registry.get(entry.provider)
            if isinstance(provider, UnconfiguredProvider):
                not_configured.append(provider.error(entry.model))
                skip = _skip(entry, f"not configured: {provider.variable} is not set")
                attempts.append({**skip, "missing": provider.variable})
                continue
            entry_request = request.with_model(entry.model)
            if estimated_tokens(entry_request) > context_window(entry.model):
                attempts.append(_skip(entry, "input larger than the model's context window"))
                continue
            blocked = self.quota.blocked_for(entry.provider)
            if blocked > 0:
                attempts.append(_skip(entry, f"quota exhausted, {blocked:.0f}s to reset"))
                unavailable.append((f"{entry}: quota exhausted", blocked))
                continue
            try:
                response = self._call_entry(entry, entry_request, budget, attempts)
                return CallOutcome(response, entry, fallback_used=index > 0, attempts=attempts)
            except CircuitOpenException as exc:
                why = "breaker forced open by an operator" if exc.forced else "breaker open"
                attempts.append(_skip(entry, f"circuit {why}"))
                unavailable.append((f"{entry}: {why}", exc.retry_after))
            except RateLimitWaitTooLong as exc:
                attempts.append(_skip(entry, f"rate limit: {exc.retry_after:.1f}s wait"))
                unavailable.append((f"{entry}: rate limited", exc.retry_after))
            except QuotaExhaustedError as exc:
                seconds = self.quota.mark_exhausted(entry.provider, exc.retry_after, str(exc))
                unavailable.append((f"{entry}: quota exhausted", seconds))
                last_error = exc
            except (ContextWindowExceededError, ContentPolicyError) as exc:
                last_error = exc  # this model or provider refuses; another may not
            except PermanentProviderError as exc:
                raise ChainFailed(exc, attempts) from exc
            except ProviderError as exc:
                last_error = exc  # transient, retries spent: next entry
        if unavailable and budget.remaining > 0:
            raise NoProviderAvailableError([r for r, _ in unavailable], min(s for _, s in unavailable))
        if last_error is None and not_configured and len(not_configured) == len(attempts):
            last_error = not_configured[0]  # nothing else was even looked at: say what to set
        if last_error is None:
            last_error = ProviderError(
                "no entry of the fallback chain could take this request: "
                + "; ".join(a["reason"] for a in attempts if a.get("reason")),
                provider=chain[0].provider if chain else "none",
                model=request.model,
            )
            last_error.kind = PermanentProviderError.kind
        raise ChainFailed(last_error, attempts)

    def _call_entry(
        self, entry: ChainEntry, request: LLMRequest, budget: AttemptBudget, attempts: list[dict[str, Any]]
    ) -> LLMResponse:
        provider = self.registry.get(entry.provider)
        breaker = self.breakers(breaker_name(entry.provider, entry.model, self.settings))
        tokens = estimated_tokens(request)

        def attempt() -> LLMResponse:
            self._wait_for_rate_limit(entry.provider, tokens)
            if not budget.take():
                raise _BudgetSpent()
            timeout = self.timeouts.timeout(entry.provider, entry.model)
            started = time.perf_counter()
            probe = False
            try:
                with breaker:
                    probe = breaker.probing
                    response = provider.complete(request, timeout=timeout)
            except CircuitOpenException:
                budget.refund()
                raise
            except ProviderError as exc:
                attempts.append({**exc.to_dict(), "entry": str(entry), "timeout_s": round(timeout, 3)})
                if isinstance(exc, ProviderTimeoutError):
                    self.timeouts.record(entry.provider, entry.model, timeout)
                if probe and exc.kind is ErrorKind.TRANSIENT:
                    # The breaker chose this call to test a provider it holds to be down, and the failure
                    # opened it again. It reports on the provider, not on the job: no attempt is charged
                    # (probes are few fleet-wide), and the entry is unavailable now, as for any open
                    # breaker, so the job moves on or parks at once: retrying would sleep its backoff
                    # holding a worker thread only to be refused, and in a long outage the jobs that carry
                    # its probes would run out of budget and fail.
                    budget.refund(sent=True)
                    raise CircuitOpenException(breaker.name, breaker.reset_timeout) from exc
                raise
            self.timeouts.record(entry.provider, entry.model, time.perf_counter() - started)
            return response

        try:
            for try_ in retrying(self.settings, budget, sleep=self.sleep):
                with try_:
                    return attempt()
        except _BudgetSpent:
            raise ChainFailed(
                ProviderError("attempt budget spent", provider=entry.provider, model=entry.model), attempts
            ) from None
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _wait_for_rate_limit(self, provider: str, tokens: int) -> None:
        if not self.rate_limits.limited(provider):
            return
        waited = 0.0
        while True:
            wait = self.rate_limits.acquire(provider, tokens)
            if wait <= 0:
                return
            if waited + wait > self.settings.rate_limit_max_wait:
                raise RateLimitWaitTooLong(provider, wait)
            self.sleep(wait)
            waited += wait


class _BudgetSpent(Exception):
    pass


def _skip(entry: ChainEntry, reason: str) -> dict[str, Any]:
    return {"entry": str(entry), "skipped": True, "reason": reason}
