"""A circuit breaker shared by the whole fleet through Redis.

The state (closed / open / half-open, plus operator states forced-open and disabled) lives in one Redis
hash per breaker; every transition happens inside one Lua script on Redis' clock (breaker_script.py), so:
- failures from any number of processes trip it at exactly ``failure_threshold``;
- half-open admits exactly ``half_open_max_calls`` probes fleet-wide, as leases that expire, so a prober
  killed mid-call cannot wedge it;
- every outcome carries the generation it started in: a late result cannot undo a newer transition;
- the script that makes a transition publishes it (Redis channel) and its caller runs the in-process
  listeners: one event per transition, fleet-wide.

The closed path avoids Redis: each process trusts its cached "closed" verdict and batches successes into
its next script call. A transition published anywhere drops the cached verdicts of that breaker in every
process at once (trip_listener.py), as does a closed breaker's first failure after a success (the next
success anywhere then reaches Redis and resets the count). So while the process is subscribed, a "closed"
verdict is trusted for ``pushed_sync_interval``; ``sync_interval`` is the bound while that subscription is
down. A reply that was under way when a transition was pushed is not cached: it may predate the
transition. Failures are always recorded at once, so the threshold is exact.

When Redis is unreachable the breaker follows ``redis_down_policy`` (``local``: an in-process breaker;
``fail_open``: allow; ``fail_closed``: refuse), logs it once per outage, counts it, and tries Redis again
after a second.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from ultra_tasks import keys
from ultra_tasks.config import get_settings
from ultra_tasks.errors import CircuitOpenException, PermanentProviderError, UltraTasksError
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis
from ultra_tasks.resilience.breaker_script import BREAKER_LUA
from ultra_tasks.resilience.local_breaker import LocalBreakerState
from ultra_tasks.resilience.trip_listener import ensure_listener

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
Listener = Callable[[str, str, str], Any]

#: seconds between attempts to reach Redis again once it failed
REDIS_RETRY_S = 1.0
#: the retry_after of a call refused by a breaker forced open with no end (an operator clears it)
FORCED_OPEN_RETRY_S = 300.0
#: seconds between a process's reminders that it uses a breaker (its name in the fleet's index)
INDEX_REFRESH_S = 60.0

#: every breaker of this process, so batched success counts are sent at exit
_live: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def breaker_redis(url: str | None = None) -> redis.Redis:
    """The Redis client breakers use (the process-wide one, with short timeouts)."""
    return shared_redis(url)


@dataclass
class _Verdict:
    """This process's cached view of the shared state."""

    state: str
    gen: int
    failures: int
    fetched: float  # monotonic
    retry_at: float  # monotonic; when an open breaker may be probed


class ProbeCancelled(Exception):
    """The outcome recorded for a half-open probe that ended by cancellation: a failure."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit breaker {name}: the probe was cancelled before the provider answered")


@dataclass
class _Token:
    """One guarded call in flight."""

    gen: int
    lease: str | None
    mode: str  # "shared", "local", "bypass" (disabled or fail-open)
    started: float


class CircuitBreaker:
    """Circuit breaker shared by every process that uses the same ``name`` and Redis.

    Usable as a decorator (sync and async functions), as a context manager (``with breaker:`` and
    ``async with breaker:``) and with ``breaker.call(fn, *args)``.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"
    FORCED_OPEN = "forced-open"
    DISABLED = "disabled"

    def __init__(
        self,
        name: str,
        failure_threshold: int | None = None,
        reset_timeout: float | None = None,
        *,
        half_open_max_calls: int | None = None,
        reset_backoff: float | None = None,
        max_reset_timeout: float | None = None,
        probe_lease: float | None = None,
        failure_rate_threshold: float | None = None,
        minimum_calls: int = 20,
        window: float = 60.0,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float | None = None,
        record_on: Iterable[type[BaseException]] = (Exception,),
        ignore_on: Iterable[type[BaseException]] = (PermanentProviderError,),
        redis_client: redis.Redis | None = None,
        redis_down_policy: str | None = None,
        sync_interval: float | None = None,
        pushed_sync_interval: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = get_settings()
        if not name or not isinstance(name, str):
            raise ValueError("name must be a non-empty string")
        self.name = name
        self.failure_threshold = int(failure_threshold or settings.circuit_breaker_failure_threshold)
        self.reset_timeout = float(reset_timeout or settings.circuit_breaker_reset_timeout)
        self.half_open_max_calls = int(half_open_max_calls or settings.circuit_breaker_half_open_max_calls)
        self.reset_backoff = float(reset_backoff or settings.circuit_breaker_reset_backoff)
        self.max_reset_timeout = float(max_reset_timeout or settings.circuit_breaker_max_reset_timeout)
        self.probe_lease = float(probe_lease or settings.effective_probe_lease)
        self.sync_interval = float(sync_interval or settings.circuit_breaker_sync_interval)
        self.pushed_sync_interval = max(
            self.sync_interval,
            float(pushed_sync_interval or settings.circuit_breaker_pushed_sync_interval),
        )
        self.redis_down_policy = redis_down_policy or settings.circuit_breaker_redis_down_policy
        if self.redis_down_policy not in ("local", "fail_open", "fail_closed"):
            raise ValueError("redis_down_policy must be local, fail_open or fail_closed")
        if failure_rate_threshold is not None and not 0 < failure_rate_threshold <= 100:
            raise ValueError("failure_rate_threshold is a percentage in (0, 100]")
        self.slow_call_duration = slow_call_duration
        self.record_on = tuple(record_on)
        self.ignore_on = tuple(ignore_on)
        self._monotonic = monotonic
        self._redis = redis_client or breaker_redis()
        self._script = self._redis.register_script(BREAKER_LUA)
        self._keys = list(keys.breaker(name))
        self._channel = keys.breaker_events()
        self._notices = keys.breaker_notices()
        self._config = _json_without_nulls(
            {
                "failure_threshold": self.failure_threshold,
                "reset_timeout": self.reset_timeout,
                "reset_backoff": self.reset_backoff,
                "max_reset_timeout": self.max_reset_timeout,
                "half_open_max_calls": self.half_open_max_calls,
                "lease_ttl": self.probe_lease,
                "rate_threshold": failure_rate_threshold,
                "minimum_calls": minimum_calls,
                "window": window,
                "slow_rate_threshold": slow_call_rate_threshold,
            }
        )
        self._batch_ok = failure_rate_threshold is None and slow_call_rate_threshold is None
        self._verdict: _Verdict | None = None
        #: bumped by every pushed transition: a reply fetched across one is not cached
        self._epoch = 0
        self._pending_successes = 0
        self._pending_rejections = 0
        self._pending_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._redis_down_until = 0.0
        self._indexed_at: float | None = None
        self._local = LocalBreakerState(
            failure_threshold=self.failure_threshold,
            reset_timeout=self.reset_timeout,
            reset_backoff=self.reset_backoff,
            max_reset_timeout=self.max_reset_timeout,
            half_open_max_calls=self.half_open_max_calls,
            monotonic=monotonic,
        )
        self._tokens: ContextVar[tuple[_Token, ...]] = ContextVar(f"breaker-{name}-{id(self)}", default=())
        #: calls decided without Redis because it was unreachable (the policy was applied)
        self.redis_unavailable_calls = 0
        _live.add(self)
        #: pushes every transition of the fleet to this process (trip_listener.py)
        self._trip_listener = ensure_listener(self._redis, (self._channel, self._notices), lambda: _live)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, failure_threshold={self.failure_threshold})"

    def forget_verdict(self) -> None:
        """Drop the cached verdict: the next call asks Redis (a transition was just published)."""
        self._epoch += 1
        self._verdict = None

    # --- listeners -------------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(name, old_state, new_state)`` for each transition this process makes."""
        self._listeners.append(listener)

    def _notify(self, from_state: str, to_state: str) -> None:
        log.warning("circuit breaker %s: %s -> %s", self.name, from_state, to_state)
        for listener in self._listeners:
            try:
                result = listener(self.name, from_state, to_state)
                if inspect.isawaitable(result):
                    _run_awaitable(result)
            except Exception:
                log.exception("breaker listener %r failed", listener)

    # --- Redis -----------------------------------------------------------------------------------------
    def _run(self, op: str, arg: dict[str, Any]) -> dict[str, Any]:
        with self._pending_lock:
            pending, self._pending_successes = self._pending_successes, 0
            rejected, self._pending_rejections = self._pending_rejections, 0
        if pending or rejected:
            arg = {**arg, "successes": pending, "rejections": rejected}
        epoch = self._epoch
        try:
            raw = self._script(
                keys=self._keys,
                args=[op, self.name, self._channel, self._config, _json_without_nulls(arg), self._notices],
            )
            # again now and then: `ultra breakers forget` may have dropped a name this process still uses
            indexed_at = self._monotonic()
            if self._indexed_at is None or indexed_at - self._indexed_at >= INDEX_REFRESH_S:
                self._redis.sadd(keys.breaker_index(), self.name)
                self._indexed_at = indexed_at
        except redis.RedisError:
            with self._pending_lock:
                self._pending_successes += pending
                self._pending_rejections += rejected
            raise
        reply: dict[str, Any] = json.loads(raw)
        now = self._monotonic()
        retry_after = float(reply.get("retry_after") or 0)
        if reply["state"] == self.FORCED_OPEN and retry_after < 0:
            # forced open with no end: a caller that waits looks again after this long (clearing it
            # publishes a transition, which wakes what waits for it at once)
            retry_after = reply["retry_after"] = FORCED_OPEN_RETRY_S
        # A transition pushed while this script was under way may be newer than its reply (the reply and
        # the event travel on different connections): then the reply is used for this call only.
        self._verdict = (
            _Verdict(
                state=reply["state"],
                gen=int(reply["gen"]),
                failures=int(reply["failures"]),
                fetched=now,
                retry_at=now + max(0.0, retry_after),
            )
            if epoch == self._epoch
            else None
        )
        if self._redis_down_until:
            log.warning("circuit breaker %s: Redis reachable again, shared state restored", self.name)
            self._redis_down_until = 0.0
        if reply.get("to"):
            self._notify(reply["from"], reply["to"])
        return reply

    def _redis_failed(self, exc: BaseException) -> None:
        if not self._redis_down_until:
            log.error(
                "circuit breaker %s: Redis unreachable (%s); applying policy %r",
                self.name,
                exc,
                self.redis_down_policy,
            )
        self._redis_down_until = self._monotonic() + REDIS_RETRY_S
        self._verdict = None

    def _degraded_before(self) -> _Token:
        self.redis_unavailable_calls += 1
        now = self._monotonic()
        if self.redis_down_policy == "fail_open":
            return _Token(0, None, "bypass", now)
        if self.redis_down_policy == "fail_closed":
            raise CircuitOpenException(self.name, REDIS_RETRY_S)
        decision, change = self._local.acquire()
        if change:
            self._notify(*change)
        if not decision.allowed:
            raise CircuitOpenException(self.name, max(0.0, decision.retry_after))
        return _Token(decision.gen, "probe" if decision.probe else None, "local", now)

    # --- the guarded call --------------------------------------------------------------------------------
    def _before_fast(self) -> _Token | None:
        """A verdict from the local cache, or None if Redis must be asked."""
        now = self._monotonic()
        if self._redis_down_until:
            if now < self._redis_down_until:
                return self._degraded_before()
            return None
        v = self._verdict
        if v is None:
            return None
        age = now - v.fetched
        if age >= self.sync_interval and not (
            v.state == self.CLOSED
            and age < self.pushed_sync_interval
            and self._trip_listener.subscribed.is_set()
        ):
            return None
        if v.state == self.CLOSED:
            return _Token(v.gen, None, "shared", now)
        if v.state == self.DISABLED:
            return _Token(v.gen, None, "bypass", now)
        if v.state == self.OPEN and now < v.retry_at:
            self._count_rejection()
            raise CircuitOpenException(self.name, v.retry_at - now, generation=v.gen)
        if v.state == self.FORCED_OPEN:
            self._count_rejection()
            raise CircuitOpenException(self.name, max(0.0, v.retry_at - now), forced=True)
        return None

    def _count_rejection(self) -> None:
        with self._pending_lock:
            self._pending_rejections += 1

    def _before(self) -> _Token:
        token = self._before_fast()
        if token is not None:
            return token
        if self._redis_down_until and self._monotonic() < self._redis_down_until:
            return self._degraded_before()
        lease = uuid.uuid4().hex
        try:
            reply = self._run("acquire", {"lease": lease})
        except REDIS_DOWN as exc:
            self._redis_failed(exc)
            return self._degraded_before()
        now = self._monotonic()
        if not reply["allowed"]:
            forced = reply["state"] == self.FORCED_OPEN
            raise CircuitOpenException(
                self.name, max(0.0, float(reply["retry_after"])), forced=forced, generation=int(reply["gen"])
            )
        mode = "bypass" if reply["state"] == self.DISABLED else "shared"
        return _Token(int(reply["gen"]), lease if reply["probe"] else None, mode, now)

    def _is_failure(self, exc: BaseException | None) -> bool:
        if exc is None or isinstance(exc, CircuitOpenException):
            return False
        if isinstance(exc, ProbeCancelled):
            return True
        if self.ignore_on and isinstance(exc, self.ignore_on):
            return False
        return isinstance(exc, self.record_on)

    def _after_fast(self, token: _Token, exc: BaseException | None) -> bool:
        """Handle the outcome without Redis when possible; True if handled."""
        failure = self._is_failure(exc)
        if token.mode == "bypass":
            return True
        if token.mode == "local":
            change = self._local.record(gen=token.gen, probe=token.lease is not None, failure=failure)
            if change:
                self._notify(*change)
            return True
        slow = (
            self.slow_call_duration is not None
            and self._monotonic() - token.started >= self.slow_call_duration
        )
        v = self._verdict
        if (
            not failure
            and token.lease is None
            and self._batch_ok
            and not slow
            and v is not None
            and v.gen == token.gen
            and v.failures == 0
        ):
            # The common case: nothing to reset, so the success only feeds metrics, in the next script call.
            with self._pending_lock:
                self._pending_successes += 1
            return True
        return False

    def _after_cancelled(self, token: _Token) -> None:
        """The call ended by cancellation (CancelledError, KeyboardInterrupt, a caller's timeout that
        cancelled it): for a probe that is a failure (it never showed the provider answering: a success
        here could close the breaker on a provider that is still down); any other call records nothing."""
        if token.lease is not None:
            self._after(token, ProbeCancelled(self.name))

    def _after(self, token: _Token, exc: BaseException | None) -> None:
        if self._after_fast(token, exc):
            return
        failure = self._is_failure(exc)
        slow = (
            self.slow_call_duration is not None
            and self._monotonic() - token.started >= self.slow_call_duration
        )
        arg = {
            "outcome": "failure" if failure else "success",
            "gen": token.gen,
            "lease": token.lease,
            "slow": slow,
        }
        try:
            self._run("record", arg)
        except REDIS_DOWN as exc_redis:
            self._redis_failed(exc_redis)
            self.redis_unavailable_calls += 1
            if failure:
                change = self._local.record(gen=self._local.gen, probe=False, failure=True)
                if change:
                    self._notify(*change)

    # --- public ways to guard a call ------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = self._before()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._after(token, exc)
            raise
        except BaseException:
            self._after_cancelled(token)
            raise
        self._after(token, None)
        return result

    async def call_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = self._before_fast()
        if token is None:
            token = await asyncio.to_thread(self._before)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not self._after_fast(token, exc):
                await asyncio.to_thread(self._after, token, exc)
            raise
        except BaseException:
            # cancelled: no awaiting now (the task is being torn down); the outcome is one script call
            self._after_cancelled(token)
            raise
        if not self._after_fast(token, None):
            await asyncio.to_thread(self._after, token, None)
        return result

    def __call__(self, fn: F) -> F:
        """Decorate a sync or async function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    @property
    def probing(self) -> bool:
        """True inside ``with breaker:`` when this call is one of the half-open state's probes."""
        stack = self._tokens.get()
        return bool(stack) and stack[-1].lease is not None

    def __enter__(self) -> CircuitBreaker:
        self._tokens.set((*self._tokens.get(), self._before()))
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = self._tokens.get()
        self._tokens.set(stack[:-1])
        if exc is not None and not isinstance(exc, Exception):
            self._after_cancelled(stack[-1])
        else:
            self._after(stack[-1], exc)

    async def __aenter__(self) -> CircuitBreaker:
        token = self._before_fast()
        if token is None:
            token = await asyncio.to_thread(self._before)
        self._tokens.set((*self._tokens.get(), token))
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        stack = self._tokens.get()
        self._tokens.set(stack[:-1])
        if exc is not None and not isinstance(exc, Exception):
            self._after_cancelled(stack[-1])
        elif not self._after_fast(stack[-1], exc):
            await asyncio.to_thread(self._after, stack[-1], exc)

    # --- reading the shared state ---------------------------------------------------------------------
    def _peek(self) -> dict[str, Any]:
        try:
            return self._run("peek", {})
        except REDIS_DOWN as exc:
            self._redis_failed(exc)
            local = self._local
            return {
                "state": local.state,
                "gen": local.gen,
                "failures": local.failures,
                "last_failure": local.last_failure,
            }

    @property
    def state(self) -> str:
        """The shared state: closed, open, half-open, forced-open or disabled."""
        return str(self._peek()["state"])

    @property
    def failure_count(self) -> int:
        """Consecutive failures counted fleet-wide while closed."""
        return int(self._peek()["failures"])

    @property
    def last_failure_time(self) -> float:
        """Epoch seconds (Redis clock) of the last recorded failure; 0 if none."""
        return float(self._peek()["last_failure"])

    def flush(self) -> None:
        """Send batched counts now (they otherwise ride on the next script call)."""
        if self._pending_successes or self._pending_rejections:
            self._peek()

    def metrics(self) -> dict[str, Any]:
        """Fleet-wide counters: successes, failures, rejections, state changes, success rate."""
        self.flush()
        raw = {_text(k): _text(v) for k, v in self._redis.hgetall(self._keys[2]).items()}
        changes = {k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("changes:")}
        successes, failures = int(raw.get("successes", 0)), int(raw.get("failures", 0))
        total = successes + failures
        return {
            "name": self.name,
            "state": self.state,
            "successes": successes,
            "failures": failures,
            "rejections": int(raw.get("rejections", 0)),
            "slow_calls": int(raw.get("slow_calls", 0)),
            "state_changes": changes,
            "success_rate": successes / total if total else None,
            "redis_unavailable_calls": self.redis_unavailable_calls,
        }

    # --- operators ---------------------------------------------------------------------------------------
    def force_open(self, for_s: float | None = None) -> None:
        """Refuse every call until reset(), or for ``for_s`` seconds (then it closes by itself)."""
        if for_s is not None and not for_s > 0:
            raise ValueError("for_s must be a positive number of seconds")
        self._run("force_open", {"for_s": for_s} if for_s else {})

    def disable(self) -> None:
        """Let every call through, recording nothing, until reset()."""
        self._run("disable", {})

    def reset(self) -> None:
        """Back to closed with no failures (also clears forced-open and disabled)."""
        self._run("reset", {})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_without_nulls(data: dict[str, Any]) -> str:
    # Lua's cjson turns JSON null into a truthy userdata; leaving the key out gives the script a nil.
    return json.dumps({k: v for k, v in data.items() if v is not None})


@atexit.register
def _flush_all() -> None:
    for breaker in list(_live):
        with contextlib.suppress(Exception):  # best effort at exit: these are metrics, not state
            breaker.flush()


_listener_tasks: set[asyncio.Task[None]] = set()


def _run_awaitable(awaitable: Any) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_await(awaitable))
        return
    task = loop.create_task(_await(awaitable))
    _listener_tasks.add(task)  # keep a reference until it is done
    task.add_done_callback(_listener_tasks.discard)


async def _await(awaitable: Any) -> None:
    await awaitable


_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def get_breaker(name: str, **options: Any) -> CircuitBreaker:
    """The process-wide breaker called ``name`` (created on first use with ``options``)."""
    breaker = _registry.get(name)
    if breaker is None:
        with _registry_lock:
            breaker = _registry.get(name)
            if breaker is None:
                breaker = _registry[name] = CircuitBreaker(name, **options)
    return breaker


def breaker_names(client: redis.Redis | None = None) -> list[str]:
    """Every breaker the fleet has used."""
    return sorted((client or breaker_redis()).smembers(keys.breaker_index()))  # type: ignore[arg-type]


def forget_breaker(name: str, client: redis.Redis | None = None) -> bool:
    """Delete a breaker's shared state, counters and index entry (``ultra breakers forget``): for one no
    process uses any more, such as a deployment renamed or removed. True if it was known. A process still
    using it starts it afresh, closed, and lists it again within INDEX_REFRESH_S."""
    client = client or breaker_redis()
    pipe = client.pipeline(transaction=False)
    pipe.delete(*keys.breaker(name))
    pipe.srem(keys.breaker_index(), name)
    deleted, removed = pipe.execute()
    return bool(deleted or removed)


__all__ = [
    "CircuitBreaker",
    "CircuitOpenException",
    "UltraTasksError",
    "breaker_names",
    "forget_breaker",
    "get_breaker",
]
