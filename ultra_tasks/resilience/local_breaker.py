"""An in-process circuit breaker with the same rules as the shared one (consecutive failures, growing
reset timeout, exactly N half-open probes, generations).

It is what a breaker falls back to, explicitly, when Redis cannot be reached and the policy is ``local``:
each process then protects itself until the shared state is reachable again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class LocalDecision:
    allowed: bool
    gen: int
    probe: bool
    retry_after: float


class LocalBreakerState:
    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        reset_backoff: float,
        max_reset_timeout: float,
        half_open_max_calls: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.reset_backoff = reset_backoff
        self.max_reset_timeout = max_reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._now = monotonic
        self._lock = threading.Lock()
        self.state = CLOSED
        self.gen = 0
        self.failures = 0
        self.trips = 0
        self.open_until = 0.0
        self.probes = 0
        self.probe_successes = 0
        self.last_failure = 0.0

    def _transition(self, to: str) -> tuple[str, str]:
        from_state, self.state = self.state, to
        self.gen += 1
        self.probes = self.probe_successes = 0
        if to == OPEN:
            self.trips += 1
            timeout = self.reset_timeout * self.reset_backoff ** (self.trips - 1)
            self.open_until = self._now() + min(timeout, self.max_reset_timeout)
        elif to == CLOSED:
            self.failures = self.trips = 0
        return from_state, to

    def acquire(self) -> tuple[LocalDecision, tuple[str, str] | None]:
        with self._lock:
            change = None
            if self.state == OPEN and self._now() >= self.open_until:
                change = self._transition(HALF_OPEN)
            if self.state == CLOSED:
                return LocalDecision(True, self.gen, False, 0.0), change
            if self.state == OPEN:
                return LocalDecision(False, self.gen, False, self.open_until - self._now()), change
            if self.probes + self.probe_successes < self.half_open_max_calls:
                self.probes += 1
                return LocalDecision(True, self.gen, True, 0.0), change
            return LocalDecision(False, self.gen, False, 1.0), change

    def record(self, *, gen: int, probe: bool, failure: bool) -> tuple[str, str] | None:
        with self._lock:
            if failure:
                self.last_failure = time.time()
            if gen != self.gen:
                return None  # started before a transition: cannot undo it
            if self.state == CLOSED:
                if not failure:
                    self.failures = 0
                    return None
                self.failures += 1
                return self._transition(OPEN) if self.failures >= self.failure_threshold else None
            if self.state == HALF_OPEN and probe:
                self.probes -= 1
                if failure:
                    return self._transition(OPEN)
                self.probe_successes += 1
                if self.probe_successes >= self.half_open_max_calls:
                    return self._transition(CLOSED)
            return None
