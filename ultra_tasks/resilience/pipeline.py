"""One job's provider call, made resilient: walk the fallback chain; for each entry, the router orders the
deployments serving its model; for each deployment check its quota mark, concurrency cap, breaker and rate
limit, then call it with an adaptive timeout and retries, inside one attempt budget for the whole chain.

- A deployment that cannot be called now (breaker open, quota exhausted, at its concurrency cap, rate
  limit beyond the wait bound) is skipped without paying a timeout, and so is one that failed transiently
  while another deployment of the same model is left: the model is served by another deployment before
  the chain moves to another model. The last deployment standing gets the retries.
- An entry whose deployments are not configured (no API key, no explicit USE_FAKE_PROVIDER) is skipped
  and recorded as such; if no other entry answers, the job fails with ``ProviderNotConfiguredError``.
- If nothing answered and some deployment was only unavailable for now, the job is deferred
  (``NoProviderAvailableError``) rather than failed.
- A permanent error ends the job at once (no retry, no fallback), except a context-window or
  content-policy refusal, which moves on to the next entry.
- Every provider call is one attempt, recorded with why it failed and at which deployment.
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
from ultra_tasks.providers.kinds.base import Deployment
from ultra_tasks.providers.registry import ProviderRegistry, UnconfiguredProvider
from ultra_tasks.resilience.breaker import CircuitBreaker, get_breaker
from ultra_tasks.resilience.chains import ChainEntry, context_window, estimated_tokens
from ultra_tasks.resilience.concurrency import ConcurrencyCapReached, ConcurrencyLimiter
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
    """The breaker of a deployment (``provider``), or of a deployment and model (CIRCUIT_BREAKER_SCOPE)."""
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
        self.router = registry.router
        self.settings = settings
        self.sleep = sleep
        self.breakers = breaker_factory
        self.quota = QuotaGuard(client, settings.quota_cooldown)
        # each deployment's own rpm/tpm from the deployments file, over PROVIDER_RATE_LIMITS
        self.rate_limits = RateLimiter(client, registry.catalog.rate_limits(settings))
        self.timeouts = AdaptiveTimeouts(client, settings)
        self.slots = ConcurrencyLimiter(client)

    def call(self, request: LLMRequest, chain: list[ChainEntry], budget: AttemptBudget) -> CallOutcome:
        state = _ChainState()
        if budget.remaining <= 0:
            spent = PermanentProviderError(
                "the job has used its whole attempt budget (JOB_ATTEMPT_BUDGET) on earlier runs",
                provider=chain[0].provider if chain else "none",
                model=request.model,
            )
            raise ChainFailed(spent, state.attempts)
        catalog = self.registry.catalog
        for index, entry in enumerate(chain):
            if budget.remaining <= 0:
                break
            entry_request = request.with_model(entry.model)
            if estimated_tokens(entry_request) > context_window(entry.model):
                state.attempts.append(_skip(entry, "input larger than the model's context window"))
                continue
            deployments = catalog.candidates(entry.provider, entry.model)
            if not deployments:
                state.attempts.append(_skip(entry, "no deployment serves this model"))
                continue
            response = self._call_model(entry, deployments, entry_request, budget, state)
            if response is not None:
                return CallOutcome(response, entry, fallback_used=index > 0, attempts=state.attempts)
        if state.unavailable and budget.remaining > 0:
            reasons = [r for r, _ in state.unavailable]
            # only open breakers in the way: the job waits for one of them to be probed or to close
            breaker = None
            if len(state.open_breakers) == len(state.unavailable):
                breaker = min(state.open_breakers, key=lambda exc: exc.retry_after)
            raise NoProviderAvailableError(reasons, min(s for _, s in state.unavailable), breaker=breaker)
        last_error = state.last_error
        if last_error is None and state.not_configured and len(state.not_configured) == len(state.attempts):
            last_error = state.not_configured[0]  # nothing else was even looked at: say what to set
        if last_error is None:
            last_error = ProviderError(
                "no entry of the fallback chain could take this request: "
                + "; ".join(a["reason"] for a in state.attempts if a.get("reason")),
                provider=chain[0].provider if chain else "none",
                model=request.model,
            )
            last_error.kind = PermanentProviderError.kind
        raise ChainFailed(last_error, state.attempts)

    def _call_model(
        self,
        entry: ChainEntry,
        deployments: tuple[Deployment, ...],
        request: LLMRequest,
        budget: AttemptBudget,
        state: _ChainState,
    ) -> LLMResponse | None:
        """The entry's answer from one of its deployments, or None (the chain moves on; ``state`` says
        why). Raises ChainFailed on a permanent error."""
        order = self.router.order(deployments)
        failed: list[Deployment] = []
        retried = False
        for position, deployment in enumerate(order):
            if budget.remaining <= 0:
                return None
            provider = self.registry.get(deployment.name)
            if isinstance(provider, UnconfiguredProvider):
                state.not_configured.append(provider.error(entry.model))
                skip = _skip(entry, f"not configured: {provider.variable} is not set", deployment)
                state.attempts.append({**skip, "missing": provider.variable})
                continue
            where = _where(entry, deployment)
            blocked = self.quota.blocked_for(deployment.name)
            if blocked > 0:
                state.attempts.append(_skip(entry, f"quota exhausted, {blocked:.0f}s to reset", deployment))
                state.unavailable.append((f"{where}: quota exhausted", blocked))
                continue
            if self.router.at_capacity(deployment):
                state.attempts.append(_skip(entry, "at its concurrency cap", deployment))
                state.unavailable.append((f"{where}: at its concurrency cap", CAPACITY_RETRY_S))
                continue
            # The model's only deployment that can be called gets the retries; while another is left,
            # or once one has failed, each gets one try and the retries come after (below).
            alone = not failed and position == len(order) - 1
            retried = retried or alone
            try:
                return self._call_deployment(entry, deployment, request, budget, state.attempts, retry=alone)
            except CircuitOpenException as exc:
                why = "breaker forced open by an operator" if exc.forced else "breaker open"
                state.attempts.append(_skip(entry, f"circuit {why}", deployment))
                state.unavailable.append((f"{where}: {why}", exc.retry_after))
                if not exc.forced:
                    state.open_breakers.append(exc)
            except RateLimitWaitTooLong as exc:
                state.attempts.append(_skip(entry, f"rate limit: {exc.retry_after:.1f}s wait", deployment))
                state.unavailable.append((f"{where}: rate limited", exc.retry_after))
            except ConcurrencyCapReached as exc:
                state.attempts.append(_skip(entry, "at its concurrency cap, fleet-wide", deployment))
                state.unavailable.append((f"{where}: at its concurrency cap", exc.retry_after))
            except QuotaExhaustedError as exc:
                seconds = self.quota.mark_exhausted(deployment.name, exc.retry_after, str(exc))
                state.unavailable.append((f"{where}: quota exhausted", seconds))
                state.last_error = exc
            except (ContextWindowExceededError, ContentPolicyError) as exc:
                state.last_error = exc  # this model refuses; another may not
                return None
            except PermanentProviderError as exc:
                raise ChainFailed(exc, state.attempts) from exc
            except ProviderError as exc:
                state.last_error = exc  # transient: the next deployment, else the next entry
                failed.append(deployment)
        # Every deployment was tried once and those that failed did so transiently: the retries left to
        # the model (RETRY_MAX_ATTEMPTS in all, as for a model on one deployment) go, with their backoff,
        # to the one the router now prefers; the rest of the budget stays with the fallbacks.
        retries = self.settings.retry_max_attempts - len(failed)
        if failed and not retried and retries > 0 and budget.remaining > 0:
            retry_on = self.router.order(failed)[0]
            try:
                return self._call_deployment(
                    entry,
                    retry_on,
                    request,
                    budget,
                    state.attempts,
                    retry=True,
                    attempts_allowed=retries,
                )
            except CircuitOpenException as exc:
                state.unavailable.append((f"{_where(entry, retry_on)}: breaker open", exc.retry_after))
                if not exc.forced:
                    state.open_breakers.append(exc)
            except PermanentProviderError as exc:
                if isinstance(exc, ContextWindowExceededError | ContentPolicyError):
                    state.last_error = exc
                    return None
                raise ChainFailed(exc, state.attempts) from exc
            except (ProviderError, RateLimitWaitTooLong, ConcurrencyCapReached) as exc:
                if isinstance(exc, ProviderError):
                    state.last_error = exc
        return None

    def _call_deployment(
        self,
        entry: ChainEntry,
        deployment: Deployment,
        request: LLMRequest,
        budget: AttemptBudget,
        attempts: list[dict[str, Any]],
        *,
        retry: bool,
        attempts_allowed: int | None = None,
    ) -> LLMResponse:
        name = deployment.name
        provider = self.registry.get(name)
        breaker = self.breakers(breaker_name(name, entry.model, self.settings))
        tokens = estimated_tokens(request)
        where = _where(entry, deployment)
        # in-flight counts and latencies matter only to a choice among deployments, or to a cap
        tracked = deployment.max_concurrency is not None or name in self.registry.catalog.shared
        router = self.router if tracked else None

        def attempt() -> LLMResponse:
            self._wait_for_rate_limit(name, tokens)
            if not budget.take():
                raise _BudgetSpent()
            try:
                budget.opening(deployment, request)  # the budget's reservation, before anything is sent
            except BaseException:
                budget.refund()
                raise
            timeout = self.timeouts.timeout(name, entry.model)
            if deployment.timeout_s is not None:
                timeout = min(timeout, deployment.timeout_s)
            slot = None
            if deployment.max_concurrency is not None:
                try:
                    slot = self.slots.acquire(name, deployment.max_concurrency, timeout)
                except ConcurrencyCapReached:
                    budget.refund()  # nothing was sent
                    raise
            started = time.perf_counter()
            probe = False
            if router is not None:
                router.started(deployment)
            latency: float | None = None
            try:
                with breaker:
                    probe = breaker.probing
                    response = provider.complete(request, timeout=timeout)
                latency = time.perf_counter() - started
            except CircuitOpenException:
                budget.refund()
                raise
            except ProviderError as exc:
                budget.failed(exc)
                attempts.append({**exc.to_dict(), "entry": where, "timeout_s": round(timeout, 3)})
                if isinstance(exc, ProviderTimeoutError):
                    self.timeouts.record(name, entry.model, timeout)
                if probe and exc.kind is ErrorKind.TRANSIENT:
                    # The breaker chose this call to test a deployment it holds to be down, and the
                    # failure opened it again. It reports on the deployment, not on the job: no attempt is
                    # charged (probes are few fleet-wide), and the deployment is unavailable now, as for
                    # any open breaker, so the job moves on or parks at once: retrying would sleep its
                    # backoff holding a worker thread only to be refused, and in a long outage the jobs
                    # that carry its probes would run out of budget and fail.
                    budget.refund(sent=True)
                    raise CircuitOpenException(breaker.name, breaker.reset_timeout) from exc
                raise
            finally:
                if router is not None:
                    router.finished(deployment, latency)
                if deployment.max_concurrency is not None:
                    self.slots.release(name, slot)
            budget.answered(response)
            self.timeouts.record(name, entry.model, latency)
            return response

        try:
            if not retry:
                return attempt()
            for try_ in retrying(self.settings, budget, sleep=self.sleep, attempts=attempts_allowed):
                with try_:
                    return attempt()
        except _BudgetSpent:
            raise ChainFailed(
                ProviderError("attempt budget spent", provider=name, model=entry.model), attempts
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


#: seconds a job whose every deployment is at its concurrency cap waits before it is run again
CAPACITY_RETRY_S = 1.0


@dataclass
class _ChainState:
    """What one walk along a chain has seen so far."""

    attempts: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[tuple[str, float]] = field(default_factory=list)
    #: the refusals of open breakers (not forced) among ``unavailable``
    open_breakers: list[CircuitOpenException] = field(default_factory=list)
    not_configured: list[ProviderNotConfiguredError] = field(default_factory=list)
    last_error: ProviderError | None = None


class _BudgetSpent(Exception):
    pass


def _where(entry: ChainEntry, deployment: Deployment) -> str:
    """The entry as attempts record it: ``provider:model``, the deployment named when it is not the
    entry's own selector."""
    if deployment.name == entry.provider:
        return str(entry)
    return f"{deployment.name}:{entry.model}"


def _skip(entry: ChainEntry, reason: str, deployment: Deployment | None = None) -> dict[str, Any]:
    where = str(entry) if deployment is None else _where(entry, deployment)
    return {"entry": where, "skipped": True, "reason": reason}
