"""Circuit breaker rules, operator controls, metrics and the Redis-down policy, against real Redis servers."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from ultra_tasks import CircuitBreaker, CircuitOpenException
from ultra_tasks.errors import ProviderBadRequestError, ServiceUnavailableException

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("redis_client")]


class Boom(Exception):
    pass


def _name() -> str:
    return f"unit-{uuid.uuid4().hex[:8]}"


def _fail(breaker: CircuitBreaker, exc: Exception | None = None) -> None:
    with pytest.raises(type(exc) if exc else Boom), breaker:
        raise exc or Boom()


def test_decorates_sync_functions_and_works_as_a_context_manager() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=2, reset_timeout=60)

    @breaker
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    with breaker:
        pass
    _fail(breaker)
    _fail(breaker)
    with pytest.raises(CircuitOpenException) as info:
        add(1, 1)
    assert info.value.name == breaker.name
    assert 59 < info.value.retry_after <= 60


async def test_async_context_manager_counts_failures() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=1, reset_timeout=60)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom()
    with pytest.raises(CircuitOpenException):
        async with breaker:
            pass


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=3, reset_timeout=60)
    _fail(breaker)
    _fail(breaker)
    assert breaker.failure_count == 2
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.failure_count == 0
    _fail(breaker)
    _fail(breaker)
    assert breaker.state == CircuitBreaker.CLOSED
    assert breaker.last_failure_time == pytest.approx(time.time(), abs=5)


def test_permanent_provider_errors_do_not_trip_it_but_transient_ones_do() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=2, reset_timeout=60)
    for _ in range(5):
        _fail(breaker, ProviderBadRequestError("HTTP 400", provider="openai"))
    assert breaker.state == CircuitBreaker.CLOSED
    _fail(breaker, ServiceUnavailableException("HTTP 503", provider="openai"))
    _fail(breaker, ServiceUnavailableException("HTTP 503", provider="openai"))
    assert breaker.state == CircuitBreaker.OPEN


def test_which_exceptions_count_is_configurable() -> None:
    breaker = CircuitBreaker(
        _name(), failure_threshold=1, reset_timeout=60, record_on=(TimeoutError,), ignore_on=()
    )
    _fail(breaker, ValueError("not counted"))
    assert breaker.state == CircuitBreaker.CLOSED
    _fail(breaker, TimeoutError("counted"))
    assert breaker.state == CircuitBreaker.OPEN


def test_failed_probe_reopens_with_a_growing_reset_timeout() -> None:
    breaker = CircuitBreaker(
        _name(), failure_threshold=1, reset_timeout=0.5, reset_backoff=4, max_reset_timeout=10
    )
    _fail(breaker)
    time.sleep(0.6)
    _fail(breaker)  # the half-open probe fails
    assert breaker.state == CircuitBreaker.OPEN
    with pytest.raises(CircuitOpenException) as info:
        breaker.call(lambda: None)
    assert 1.5 < info.value.retry_after <= 2.0  # 0.5 s x 4 on the second trip


def test_listeners_hear_each_transition_once_with_old_and_new_state() -> None:
    seen: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(_name(), failure_threshold=1, reset_timeout=0.3)
    breaker.add_listener(lambda name, old, new: seen.append((name, old, new)))
    _fail(breaker)
    time.sleep(0.4)
    breaker.call(lambda: None)
    assert [(old, new) for _, old, new in seen] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert {name for name, _, _ in seen} == {breaker.name}


def test_operators_can_force_open_disable_and_reset() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=1, reset_timeout=60, sync_interval=0.05)
    breaker.force_open()
    assert breaker.state == CircuitBreaker.FORCED_OPEN
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: None)
    breaker.disable()
    assert breaker.state == CircuitBreaker.DISABLED
    for _ in range(3):
        _fail(breaker)  # not recorded against the state while disabled
    assert breaker.call(lambda: "through") == "through"
    breaker.reset()
    assert breaker.state == CircuitBreaker.CLOSED
    changes = breaker.metrics()["state_changes"]
    assert changes == {"closed->forced-open": 1, "forced-open->disabled": 1, "disabled->closed": 1}


def test_failure_rate_window_trips_on_mixed_traffic() -> None:
    breaker = CircuitBreaker(
        _name(),
        failure_threshold=1000,
        reset_timeout=60,
        failure_rate_threshold=50,
        minimum_calls=10,
        window=30,
    )
    for i in range(9):
        if i % 2:
            _fail(breaker)
        else:
            breaker.call(lambda: None)
    assert breaker.state == CircuitBreaker.CLOSED  # 4 of 9 failed, and fewer than minimum_calls
    _fail(breaker)
    assert breaker.state == CircuitBreaker.OPEN  # 5 of 10 = 50 %


def test_slow_call_rate_trips_it() -> None:
    breaker = CircuitBreaker(
        _name(),
        failure_threshold=1000,
        reset_timeout=60,
        failure_rate_threshold=100,
        minimum_calls=4,
        slow_call_duration=0.05,
        slow_call_rate_threshold=75,
    )
    for _ in range(3):
        breaker.call(time.sleep, 0.06)
    assert breaker.state == CircuitBreaker.CLOSED
    breaker.call(time.sleep, 0.06)
    assert breaker.state == CircuitBreaker.OPEN


def test_metrics_count_successes_failures_rejections_and_success_rate() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=2, reset_timeout=60)
    for _ in range(6):
        breaker.call(lambda: None)  # batched on the closed path, flushed by metrics()
    _fail(breaker)
    _fail(breaker)
    for _ in range(3):
        with pytest.raises(CircuitOpenException):
            breaker.call(lambda: None)
    m = breaker.metrics()
    assert (m["successes"], m["failures"]) == (6, 2)
    assert m["rejections"] >= 1
    assert m["success_rate"] == pytest.approx(0.75)
    assert m["state_changes"] == {"closed->open": 1}


# --- Redis unreachable (a private redis-server from conftest, so an outage hurts nobody else) ----------
from conftest import RedisServer  # noqa: E402


def _breaker_on(url: str, policy: str, **kw: Any) -> CircuitBreaker:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True)
    return CircuitBreaker(
        _name(), failure_threshold=2, reset_timeout=60, redis_client=client, redis_down_policy=policy, **kw
    )


@pytest.mark.parametrize(("policy", "allowed"), [("fail_open", True), ("fail_closed", False)])
def test_redis_down_policy_fail_open_or_closed_is_applied_and_counted(
    private_redis: RedisServer, policy: str, allowed: bool
) -> None:
    breaker = _breaker_on(private_redis.url, policy)
    private_redis.stop()
    if allowed:
        assert breaker.call(lambda: "through") == "through"
    else:
        with pytest.raises(CircuitOpenException):
            breaker.call(lambda: "refused")
    assert breaker.redis_unavailable_calls == 1


def test_redis_down_falls_back_to_an_in_process_breaker_then_back_to_shared_state(
    private_redis: RedisServer,
) -> None:
    breaker = _breaker_on(private_redis.url, "local", sync_interval=0.05)
    breaker.call(lambda: None)
    private_redis.stop()
    # the in-process breaker protects this process meanwhile
    _fail(breaker)
    _fail(breaker)
    with pytest.raises(CircuitOpenException):
        breaker.call(lambda: None)
    assert breaker.redis_unavailable_calls >= 3
    # when Redis returns, the shared state (closed, never tripped there) is used again
    private_redis.start()
    time.sleep(1.1)
    assert breaker.call(lambda: "shared again") == "shared again"
    assert breaker.state == CircuitBreaker.CLOSED


def test_a_cancelled_probe_counts_as_a_failure_and_opens_the_breaker_again() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=1, reset_timeout=0.3)
    _fail(breaker)
    time.sleep(0.35)
    # When the half-open probe is cancelled before the provider answers (Ctrl-C, a killed task)
    with pytest.raises(KeyboardInterrupt), breaker:
        assert breaker.probing
        raise KeyboardInterrupt
    # Then it is a failed probe, never a success that would close the breaker
    assert breaker.state == CircuitBreaker.OPEN


async def test_a_probe_cancelled_in_asyncio_counts_as_a_failure() -> None:
    import asyncio

    breaker = CircuitBreaker(_name(), failure_threshold=1, reset_timeout=0.3)
    _fail(breaker)
    await asyncio.sleep(0.35)

    @breaker
    async def slow_call() -> str:
        await asyncio.sleep(10)
        return "never"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow_call(), timeout=0.2)  # the caller's timeout cancels the probe
    assert breaker.state == CircuitBreaker.OPEN


def test_a_cancelled_call_while_closed_records_no_success_and_no_failure() -> None:
    breaker = CircuitBreaker(_name(), failure_threshold=2, reset_timeout=60)
    _fail(breaker)
    with pytest.raises(KeyboardInterrupt), breaker:
        raise KeyboardInterrupt
    assert breaker.failure_count == 1  # neither reset by a success nor counted as a second failure


class _CountingRedis(redis.Redis):
    """A breaker's client that counts the commands it sends (its Redis round trips)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0
        self.before_reply: Any = None  # called once a reply is in, before the caller reads it

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent += 1
        reply = super().execute_command(*args, **options)
        if self.before_reply is not None:
            self.before_reply()
        return reply


def _subscribed_breaker(**options: Any) -> tuple[CircuitBreaker, _CountingRedis]:
    import os

    client = _CountingRedis.from_url(os.environ["REDIS_URL"], socket_timeout=2)
    breaker = CircuitBreaker(_name(), redis_client=client, **options)
    assert breaker._trip_listener.subscribed.wait(5)
    return breaker, client


def test_while_subscribed_a_closed_verdict_is_trusted_past_the_sync_interval() -> None:
    # Given a breaker whose process is subscribed to the breaker events, with a cached "closed" verdict
    breaker, client = _subscribed_breaker(sync_interval=0.05, pushed_sync_interval=30)
    breaker.call(lambda: "asks Redis")
    sent = client.sent
    # When it is called at a worker's pace, each call later than the sync interval
    for _ in range(10):
        time.sleep(0.1)
        breaker.call(lambda: "through")
    # Then no call asked Redis: a trip would have been pushed
    assert client.sent == sent


def test_a_reply_under_way_when_a_transition_is_pushed_is_not_cached() -> None:
    breaker, client = _subscribed_breaker(sync_interval=30, pushed_sync_interval=30)
    # Given a transition pushed while this process's script call was on its way back
    client.before_reply = breaker.forget_verdict
    breaker.call(lambda: "through")
    client.before_reply = None
    # Then its reply served that call only: the next call asks Redis again ...
    sent = client.sent
    breaker.call(lambda: "asks again")
    assert client.sent == sent + 1
    # ... and caches its reply
    breaker.call(lambda: "cached")
    assert client.sent == sent + 1


def test_a_success_anywhere_after_a_failure_resets_the_count_while_verdicts_are_trusted_long() -> None:
    # Given two processes' breakers (two instances) trusting a "closed, no failures" verdict for long
    options: dict[str, Any] = {"failure_threshold": 2, "sync_interval": 0.05, "pushed_sync_interval": 30}
    watcher, _ = _subscribed_breaker(**options)
    failing = CircuitBreaker(watcher.name, **options)
    watcher.call(lambda: "cached verdict: closed, no failures")
    # When the other one fails once, then the watcher succeeds
    _fail(failing)
    deadline = time.monotonic() + 2
    while watcher._verdict is not None:  # the failure notice reaches its process
        assert time.monotonic() < deadline, "no failure notice was pushed"
        time.sleep(0.01)
    watcher.call(lambda: "a success after the failure")
    # Then the success reached Redis and reset the count: the next failure does not trip it
    assert watcher.failure_count == 0
    _fail(failing)
    assert failing.state == CircuitBreaker.CLOSED
