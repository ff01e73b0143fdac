"""Retries with tenacity inside one budget per job, shared by the whole fallback chain.

Only transient and rate-limited errors are retried. The wait is exponential with jitter (RETRY_INITIAL_DELAY,
RETRY_BACKOFF_FACTOR, RETRY_MAX_DELAY), or the provider's Retry-After when it is longer, up to
RETRY_AFTER_MAX; a longer Retry-After ends the retries for that entry so the chain moves on at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base

from ultra_tasks.config import Settings
from ultra_tasks.errors import ErrorKind, ProviderError

if TYPE_CHECKING:
    from ultra_tasks.providers.base import LLMRequest, LLMResponse
    from ultra_tasks.providers.kinds.base import Deployment

RETRYABLE = (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED)


class AttemptBudget:
    """How many provider calls a job may still make, across every entry of its chain."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def take(self) -> bool:
        with self._lock:
            if self.used >= self.total:
                return False
            self.used += 1
            return True

    def refund(self, *, sent: bool = False) -> None:
        """Give back an attempt: one that never reached the provider (its breaker refused it), or one that
        did (``sent``) but is not charged to the job (a failed half-open probe reports on the provider)."""
        with self._lock:
            self.used = max(0, self.used - 1)

    # What a call taken from the budget became, for the job's cost accounting (billing/meter.py): the
    # plain budget keeps no accounts.
    def opening(self, deployment: Deployment, request: LLMRequest) -> None:
        """The call just taken is about to go to ``deployment``; may refuse it by raising (nothing sent:
        the caller gives the attempt back)."""

    def answered(self, response: LLMResponse) -> None:
        """The call answered."""

    def failed(self, exc: BaseException) -> None:
        """The call went out and failed."""


class _BudgetSpent(stop_base):
    def __init__(self, budget: AttemptBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.budget.remaining <= 0


class _RetryAfterTooLong(stop_base):
    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> bool:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return bool(isinstance(exc, ProviderError) and exc.retry_after and exc.retry_after > self.cap)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.kind in RETRYABLE


class _Wait:
    """Exponential backoff with jitter, or the provider's Retry-After when that is longer."""

    def __init__(self, settings: Settings) -> None:
        self.backoff = wait_random_exponential(
            multiplier=settings.retry_initial_delay,
            exp_base=settings.retry_backoff_factor,
            max=settings.retry_max_delay,
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.backoff(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, ProviderError) and exc.retry_after:
            wait = max(wait, exc.retry_after)
        return wait


def retrying(
    settings: Settings, budget: AttemptBudget, *, sleep: Callable[[float], Any], attempts: int | None = None
) -> Retrying:
    """The retry policy of one chain entry (``attempts`` tries, default RETRY_MAX_ATTEMPTS); ``sleep`` is
    injected so tests need not wait."""
    return Retrying(
        stop=stop_after_attempt(attempts or settings.retry_max_attempts)
        | _BudgetSpent(budget)
        | _RetryAfterTooLong(settings.retry_after_max),
        wait=_Wait(settings),
        retry=retry_if_exception(is_retryable),
        sleep=sleep,
        reraise=True,
    )
