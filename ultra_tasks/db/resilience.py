"""What the database layer does when the database misbehaves: which errors are transient, how they are
retried (tenacity), and a circuit breaker on connecting.

The breaker is this process's own (``resilience/local_breaker.py``), one per database URL, not the
fleet-shared Redis breaker: "this host cannot reach PostgreSQL" is a fact about one host's network path,
DNS, pgbouncer or connection limit; a fleet-wide trip would stop healthy hosts because one is cut off,
and it would make the database's breaker depend on Redis, the other store that may be down at the time.
Each process learns an outage after ``DATABASE_BREAKER_FAILURE_THRESHOLD`` failed connects, then fails
fast (no connect attempt, no connect timeout) until a single probe after
``DATABASE_BREAKER_RESET_TIMEOUT`` seconds succeeds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ultra_tasks.config import Settings, redact_url
from ultra_tasks.errors import DatabaseTimeoutError, DependencyUnavailableError
from ultra_tasks.resilience.local_breaker import CLOSED, OPEN, LocalBreakerState, LocalDecision

log = logging.getLogger(__name__)

#: first retry wait (seconds; full jitter, doubling) and the longest single wait
RETRY_INITIAL_WAIT_S = 0.05
RETRY_MAX_WAIT_S = 1.0

#: SQLSTATEs after which the same work can succeed on a fresh connection: connection exceptions (class 08),
#: the server shutting down or starting up (57P01-57P03), too many connections (53300)
_TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
#: SQLSTATEs that only a re-run of the whole transaction can get past: serialization failure, deadlock
_RERUN_SQLSTATES = {"40001", "40P01"}
#: statement cancelled by statement_timeout: not transient (it would time out again), not an outage
QUERY_CANCELED = "57014"


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "pgcode", None)
    return str(code) if code else None


def is_transient(exc: BaseException, *, whole_transaction: bool = False) -> bool:
    """True when trying again on a fresh connection may succeed. ``whole_transaction``: the retry re-runs
    the transaction from its start, so serialization failures and deadlocks qualify too.

    IntegrityError, ProgrammingError, a statement timeout and SQLite's OperationalErrors ("no such table",
    "database is locked" after its 30 s busy timeout) are never retried: the same work fails the same way.
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:  # SQLAlchemy recognised a dropped connection
        return True
    if not isinstance(exc, OperationalError):
        return False
    code = sqlstate(exc)
    if code is None:
        # libpq reports a refused, unreachable or timed-out connect without a SQLSTATE
        return _is_postgres_error(exc)
    if code.startswith("08") or code in _TRANSIENT_SQLSTATES:
        return True
    return whole_transaction and code in _RERUN_SQLSTATES


def _is_postgres_error(exc: DBAPIError) -> bool:
    return type(exc.orig).__module__.startswith(("psycopg2", "psycopg"))


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line (psycopg2 adds context lines; none carries a password)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def map_error(exc: DBAPIError, url: str, statement_timeout_ms: int) -> DependencyUnavailableError:
    """Our error for a database failure, naming the database with its password masked."""
    where = redact_url(url)
    reason = first_line(exc)
    if sqlstate(exc) == QUERY_CANCELED:
        return DatabaseTimeoutError(
            f"{where}: statement cancelled after {statement_timeout_ms} ms (DATABASE_STATEMENT_TIMEOUT_MS)"
        )
    return DependencyUnavailableError("database", f"{where}: {reason}")


def is_outage(exc: BaseException) -> bool:
    """Errors that mean the database (not the statement) is in trouble: mapped to our exception tree."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


class DatabaseGuard:
    """The breaker and counters of one database URL in this process."""

    def __init__(
        self,
        url: str,
        *,
        failure_threshold: int,
        reset_timeout: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = redact_url(url)
        self.failure_threshold = failure_threshold
        self.breaker = LocalBreakerState(
            failure_threshold=failure_threshold,
            reset_timeout=reset_timeout,
            reset_backoff=1.0,
            max_reset_timeout=reset_timeout,
            half_open_max_calls=1,
            monotonic=monotonic,
        )
        self.counts: Counter[str] = Counter()
        self.transitions: Counter[str] = Counter()
        self.last_failure = ""
        self._lock = threading.Lock()

    def admit(self) -> LocalDecision:
        """Permission to try connecting; DependencyUnavailableError at once while the breaker is open."""
        decision, change = self.breaker.acquire()
        self._transitioned(change)
        if not decision.allowed:
            self._count("rejected")
            raise DependencyUnavailableError(
                "database",
                f"{self.url}: circuit open after {self.failure_threshold} failed connection attempts "
                f"(last: {self.last_failure}); not trying again for {max(decision.retry_after, 0.0):.1f}s",
            )
        self._count("checkouts")
        return decision

    def record(self, decision: LocalDecision, *, failure: bool, reason: str = "") -> None:
        if failure:
            self._count("connect_failures")
            self.last_failure = reason
        self._transitioned(self.breaker.record(gen=decision.gen, probe=decision.probe, failure=failure))

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _transitioned(self, change: tuple[str, str] | None) -> None:
        if change is None:
            return
        old, new = change
        with self._lock:
            self.transitions[f"{old}->{new}"] += 1
        if new == OPEN:
            log.warning(
                "database breaker for %s opened after %d failed connection attempts: failing fast for %.0fs",
                self.url,
                self.failure_threshold,
                self.breaker.reset_timeout,
            )
        elif new == CLOSED:
            log.warning("database breaker for %s closed: the database answers again", self.url)
        else:
            log.info("database breaker for %s half-open: one connection attempt may probe", self.url)

    def stats(self) -> dict[str, Any]:
        """JSON-safe state and counters (for metrics and the status page)."""
        with self._lock:
            return {
                "url": self.url,
                "state": self.breaker.state,
                "consecutive_failures": self.breaker.failures,
                "transitions": dict(self.transitions),
                **{k: self.counts.get(k, 0) for k in _COUNTS},
            }


#: checkouts: connections asked for through the breaker (pooled or new); rejected: refused while open
_COUNTS = ("checkouts", "connect_failures", "rejected", "retries", "replica_fallbacks")


def retrying(
    settings: Settings,
    guard: DatabaseGuard,
    *,
    whole_transaction: bool,
    first_failure: BaseException | None = None,
) -> Retrying:
    """A few quick attempts with full-jitter exponential backoff, bounded in count and in total time.

    ``first_failure``: the caller already made the first attempt itself and it failed transiently (the
    connect fast path, engine._open); it is logged and counted as attempt 1, the first backoff is slept
    here, and the Retrying returned makes the remaining attempts."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        _note_retry(guard, state.attempt_number + offset, exc)

    offset = 0
    if first_failure is not None:
        _note_retry(guard, 1, first_failure)
        time.sleep(random.uniform(0, RETRY_INITIAL_WAIT_S))  # the first full-jitter wait
        offset = 1
    return Retrying(
        stop=stop_after_attempt(max(1, settings.database_retry_attempts - offset))
        | stop_after_delay(settings.database_retry_max_time),
        wait=wait_random_exponential(multiplier=RETRY_INITIAL_WAIT_S * 2**offset, max=RETRY_MAX_WAIT_S),
        retry=retry_if_exception(lambda e: is_transient(e, whole_transaction=whole_transaction)),
        before_sleep=before_sleep,
        reraise=True,
    )


def _note_retry(guard: DatabaseGuard, attempt: int, exc: BaseException | None) -> None:
    guard._count("retries")
    log.info(
        "transient database error on %s (attempt %d), retrying: %s",
        guard.url,
        attempt,
        first_line(exc) if exc else "?",
    )
