"""Recovery after an outage with a backlog: the jobs parked while a provider's breaker was open reach it in
the recovery ramp, not all at once. A module of its own: every releaser that may hear the breaker close
(the first one makes the ramp, with its settings) belongs to this test's worker."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, JobStatus, submit

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers")]


def test_jobs_parked_through_an_outage_reach_the_recovered_provider_in_a_ramp_not_all_at_once(
    worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    # Given jobs parked while the provider's breaker was open (they were due when it may be probed)
    first, interval, reset = 4, 1.0, 3.0
    worker_factory(
        concurrency=8,
        env={"PARK_RAMP_FIRST": str(first), "PARK_RAMP_INTERVAL": str(interval), "PARK_RELEASE_POLL": "0.2"},
    )
    model = "claude-3-5-haiku-latest"
    with pytest.raises(ZeroDivisionError):
        CircuitBreaker("anthropic", failure_threshold=1, reset_timeout=reset).call(lambda: 1 / 0)
    handles = [submit(f"backlog {i}", model=model, fallback=False) for i in range(40)]
    deadline = time.monotonic() + 20
    while not all(h.status() is JobStatus.PARKED for h in handles):
        assert time.monotonic() < deadline, [h.status() for h in handles]
        time.sleep(0.1)
    assert fake_provider.stats()["by_model"].get(model, 0) == 0
    # When the provider is probed once the reset timeout has passed, and answers
    calls: list[tuple[float, int]] = []
    closed_at = None
    deadline = time.monotonic() + 60
    while fake_provider.stats()["by_model"].get(model, 0) < len(handles):
        assert time.monotonic() < deadline, calls[-1:]
        now = time.monotonic()
        calls.append((now, fake_provider.stats()["by_model"].get(model, 0)))
        if closed_at is None and CircuitBreaker("anthropic").state == CircuitBreaker.CLOSED:
            closed_at = now
        time.sleep(0.05)
    assert closed_at is not None
    # Then the backlog reached it in the ramp: within the first interval after the breaker closed, the
    # probe and at most the ramp's first step
    in_first_interval = max(n for t, n in calls if t <= closed_at + interval)
    # the calls made by each moment the count changed, in seconds from the close
    steps = [(round(t - closed_at, 2), n) for i, (t, n) in enumerate(calls) if i == 0 or n != calls[i - 1][1]]
    assert in_first_interval <= 1 + first, steps
    for handle in handles:
        assert handle.result(timeout=60).text.startswith("echo: backlog")
