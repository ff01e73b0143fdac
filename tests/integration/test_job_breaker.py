"""The job path behind one breaker per provider: failures trip it, then jobs skip the provider at once."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, JobFailedError, JobStatus, submit
from ultra_tasks.jobs.parking import Parking

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers")]


def test_open_breaker_parks_jobs_without_calling_the_provider_then_they_complete(
    worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    worker_factory(
        concurrency=4, env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "3", "CIRCUIT_BREAKER_RESET_TIMEOUT": "2"}
    )
    # Given the provider answers 503, a job's three attempts fail and trip the provider's breaker
    fake_provider.add_fault("status", api="anthropic", status=503)
    with pytest.raises(JobFailedError) as info:
        submit("failing", model="claude-3-5-haiku-latest", fallback=False).result(timeout=30)
    assert info.value.error["kind"] == "transient"
    assert info.value.error["provider_calls"] == 3
    assert CircuitBreaker("anthropic").state == CircuitBreaker.OPEN
    calls_when_open = fake_provider.stats()["by_api"]["anthropic"]

    # When another job arrives while it is open
    fake_provider.clear_faults()
    started = time.monotonic()
    handle = submit("after the outage", model="claude-3-5-haiku-latest", fallback=False)
    time.sleep(0.5)
    # Then it is parked in Redis, saying why, without touching the provider (no timeout paid) ...
    assert handle.status() is JobStatus.PARKED
    record = handle.record()
    assert "anthropic" in record["status_reason"] and "open" in record["status_reason"]
    assert Parking(redis_client).due_at(handle.id) is not None
    assert fake_provider.stats()["by_api"]["anthropic"] == calls_when_open
    # ... and runs as the breaker's probe once the reset timeout passed, closing it again
    result = handle.result(timeout=30)
    assert result.text == "echo: after the outage"
    assert time.monotonic() - started < 10
    assert handle.record()["attempts"] == 1
    assert CircuitBreaker("anthropic").state == CircuitBreaker.CLOSED
    # the other provider was never affected
    assert submit("still fine", model="gpt-4o").result(timeout=30).provider == "openai"


def test_permanent_errors_do_not_trip_the_provider_breaker(llm_worker: Any, fake_provider: Any) -> None:
    fake_provider.add_fault("status", api="openai", status=400)
    for i in range(6):
        with pytest.raises(JobFailedError):
            submit(f"bad {i}", model="gpt-4.1-nano").result(timeout=30)
    assert CircuitBreaker("openai").state == CircuitBreaker.CLOSED
    by_model = fake_provider.stats()["by_model"]
    assert by_model.get("gpt-4.1-nano") == 6  # no retry
    assert by_model.get("claude-3-5-haiku-latest", 0) == 0  # no fallback


def test_a_forced_open_breaker_parks_its_jobs_until_cleared_without_cycling_them(
    llm_worker: Any, fake_provider: Any
) -> None:
    # Given an operator forced the provider's breaker open
    CircuitBreaker("anthropic").force_open()
    handle = submit("waits for the operator", model="claude-3-5-haiku-latest", fallback=False)
    deadline = time.monotonic() + 20
    while handle.status() is not JobStatus.PARKED:
        assert time.monotonic() < deadline, handle.status()
        time.sleep(0.1)
    # Then the job stays parked, not claimed, run and parked again every second or so
    time.sleep(10)
    assert handle.status() is JobStatus.PARKED
    parks = llm_worker.log().count(f"job {handle.id} parked")
    assert parks == 1, parks
    assert "forced open by an operator" in (handle.status_reason() or "")
    assert fake_provider.stats()["by_api"]["anthropic"] == 0
    # When the operator clears it, the job runs at once
    CircuitBreaker("anthropic").reset()
    assert handle.result(timeout=20).text == "echo: waits for the operator"


def test_a_breaker_forced_open_for_a_while_parks_its_jobs_once_until_it_runs_out(
    llm_worker: Any, fake_provider: Any
) -> None:
    # Given an operator forced the provider's breaker open for 4 s (ultra breakers force-open --for 4)
    CircuitBreaker("anthropic").force_open(for_s=4)
    forced_at = time.monotonic()
    handle = submit("waits for the operator's duration", model="claude-3-5-haiku-latest", fallback=False)
    # Then the job is parked once, and runs once the duration is over, with nobody clearing it
    assert handle.result(timeout=30).text == "echo: waits for the operator's duration"
    assert time.monotonic() - forced_at >= 4
    parks = llm_worker.log().count(f"job {handle.id} parked")
    assert parks == 1, parks
    assert CircuitBreaker("anthropic").state == CircuitBreaker.CLOSED


def test_a_breaker_forced_open_for_a_while_closes_by_itself(redis_client: Any) -> None:
    breaker = CircuitBreaker("forced-for-a-while")
    breaker.force_open(for_s=1)
    assert breaker.state == CircuitBreaker.FORCED_OPEN
    time.sleep(1.1)
    assert breaker.state == CircuitBreaker.CLOSED
    assert breaker.call(lambda: "through") == "through"
