"""The result cache in the job path: hits skip the provider, and identical jobs share one provider call."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ultra_tasks import CircuitBreaker, submit

pytestmark = pytest.mark.timeout(120)


def _calls(fake_provider: Any, model: str) -> int:
    return int(fake_provider.stats()["by_model"].get(model, 0))


def test_deterministic_job_is_answered_from_cache_without_touching_breaker_or_provider(
    llm_worker: Any, fake_provider: Any
) -> None:
    prompt = f"cache me {uuid.uuid4().hex}"
    first = submit(prompt, model="gpt-4o", temperature=0).result(timeout=30)
    assert first.cached is False
    CircuitBreaker("openai").force_open()  # a hit must not even ask the breaker
    try:
        second = submit(prompt, model="gpt-4o", temperature=0).result(timeout=30)
    finally:
        CircuitBreaker("openai").reset()
    assert second.cached is True
    assert (second.text, second.provider, second.model) == (first.text, first.provider, first.model)
    assert second.usage == first.usage
    assert _calls(fake_provider, "gpt-4o") == 1


def test_nondeterministic_and_opted_out_jobs_are_not_cached(llm_worker: Any, fake_provider: Any) -> None:
    prompt = f"fresh every time {uuid.uuid4().hex}"
    for kwargs in ({"temperature": 0.7}, {}, {"temperature": 0, "cache": False}):
        for _ in range(2):
            assert submit(prompt, model="gpt-4o-mini", **kwargs).result(timeout=30).cached is False
    assert _calls(fake_provider, "gpt-4o-mini") == 6


def test_fifty_identical_concurrent_jobs_on_two_workers_make_exactly_one_provider_call(
    worker_factory: Any, fake_provider: Any
) -> None:
    # Given two worker processes with different hash seeds and a provider that takes a second to answer
    worker_factory(concurrency=25, env={"PYTHONHASHSEED": "1"})
    worker_factory(concurrency=25, env={"PYTHONHASHSEED": "2"})
    fake_provider.add_fault("latency", model="gpt-4.1-mini", ms=1000)
    prompt = f"the same question {uuid.uuid4().hex}"
    # When fifty identical deterministic jobs arrive at once
    handles = [submit(prompt, model="gpt-4.1-mini", temperature=0) for _ in range(50)]
    results = [h.result(timeout=60) for h in handles]
    # Then the provider was called once and every job got its answer
    assert _calls(fake_provider, "gpt-4.1-mini") == 1
    assert {r.text for r in results} == {f"echo: {prompt}"}
    assert sum(not r.cached for r in results) == 1
    assert len({h.record()["worker"] for h in handles}) >= 2  # jobs ran in more than one process
