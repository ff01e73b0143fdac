"""The public ``Fallback`` decorator: call a fallback function when the primary raises one of the
configured exceptions; sync and async; with metrics.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class FallbackMetrics:
    """Counters of one Fallback in this process."""

    invocations: int = 0
    primary_failures: int = 0
    fallback_invocations: int = 0
    fallback_successes: int = 0
    fallback_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _add(self, **counts: float) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    @property
    def primary_failure_rate(self) -> float | None:
        return self.primary_failures / self.invocations if self.invocations else None

    @property
    def fallback_success_rate(self) -> float | None:
        return self.fallback_successes / self.fallback_invocations if self.fallback_invocations else None

    @property
    def average_fallback_latency(self) -> float | None:
        """Seconds."""
        return self.fallback_seconds / self.fallback_invocations if self.fallback_invocations else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "invocations": self.invocations,
            "primary_failures": self.primary_failures,
            "primary_failure_rate": self.primary_failure_rate,
            "fallback_invocations": self.fallback_invocations,
            "fallback_success_rate": self.fallback_success_rate,
            "average_fallback_latency_s": self.average_fallback_latency,
        }


class Fallback:
    """``@Fallback(fallback_function, should_fallback_on=[ServiceUnavailableException, TimeoutException])``.

    The fallback receives the primary's arguments. An exception not listed propagates untouched.
    """

    def __init__(
        self,
        fallback_function: Callable[..., Any],
        should_fallback_on: Iterable[type[BaseException]] | None = None,
    ) -> None:
        self.fallback_function = fallback_function
        self.should_fallback_on = tuple(should_fallback_on or (Exception,))
        self.metrics = FallbackMetrics()

    def __call__(self, fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                self.metrics._add(invocations=1)
                try:
                    return await fn(*args, **kwargs)
                except self.should_fallback_on:
                    self.metrics._add(primary_failures=1, fallback_invocations=1)
                started = time.perf_counter()
                try:
                    result = self.fallback_function(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                finally:
                    self.metrics._add(fallback_seconds=time.perf_counter() - started)
                self.metrics._add(fallback_successes=1)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.metrics._add(invocations=1)
            try:
                return fn(*args, **kwargs)
            except self.should_fallback_on:
                self.metrics._add(primary_failures=1, fallback_invocations=1)
            started = time.perf_counter()
            try:
                result = self.fallback_function(*args, **kwargs)
            finally:
                self.metrics._add(fallback_seconds=time.perf_counter() - started)
            self.metrics._add(fallback_successes=1)
            return result

        return wrapper  # type: ignore[return-value]
