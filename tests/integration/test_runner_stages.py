"""The runner's stages (jobs/runner.py JobRun), each on its own against the real Redis and SQL, and the
process Runtime that supplies their parts."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis

from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.jobs import records
from ultra_tasks.jobs.lease import Acquired, Leases
from ultra_tasks.jobs.outcomes import Expired, Failed, Parked, Succeeded
from ultra_tasks.jobs.parking import CAUSE_MODE
from ultra_tasks.jobs.record_buffer import RecordWriter
from ultra_tasks.jobs.runner import JobRun, execute_job
from ultra_tasks.jobs.spec import JobSpec
from ultra_tasks.jobs.validation import build_spec
from ultra_tasks.mode.effects import Admission
from ultra_tasks.providers.base import LLMResponse, Usage
from ultra_tasks.resilience.chains import ChainEntry
from ultra_tasks.resilience.pipeline import CallOutcome
from ultra_tasks.runtime import Runtime, runtime

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("database")]


class CountingCaller:
    """Stands in for the provider pipeline: takes an attempt from the budget and answers."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, request: Any, chain: list[ChainEntry], budget: Any) -> CallOutcome:
        assert budget.take()
        self.calls += 1
        response = LLMResponse("fresh answer", request.model, "openai", Usage(3, 4), 1.0, "stop")
        return CallOutcome(response, ChainEntry("openai", request.model), fallback_used=False)


def _runtime(client: redis.Redis, caller: CountingCaller) -> Runtime:
    settings = get_settings()
    return Runtime(settings, redis_client=client, caller=caller, leases=Leases(client, settings))  # type: ignore[arg-type]


def _job(spec: JobSpec, *, expires_in: float | None = None) -> str:
    job_id = str(uuid.uuid4())
    now = utcnow()
    records.insert_job(
        job_id=job_id,
        priority="default",
        queue="llm.default",
        model=spec.model,
        request=spec.to_payload(),
        now=now,
        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
    )
    records.mark_published(job_id)
    return job_id


def _run(rt: Runtime, job_id: str, spec: JobSpec) -> JobRun:
    got = rt.leases.acquire(job_id, "stage-test/1")
    assert isinstance(got, Acquired)
    return JobRun(rt, job_id, spec.to_payload(), got.lease, got.start, "llm.default", RecordWriter(rt.redis))


def _spec(prompt: str, **fields: Any) -> JobSpec:
    return build_spec(get_settings(), prompt=prompt, model="gpt-4o", **fields)


def test_a_job_whose_request_cannot_be_read_fails_at_once_naming_the_field_and_calls_no_provider(
    redis_client: redis.Redis,
) -> None:
    # Given a recorded job whose message carries a request without messages (a producer of another shape)
    caller = CountingCaller()
    job_id = _job(_spec("fine"))
    broken = {"model": "gpt-4o", "max_tokens": 5}
    # When a worker runs it
    outcome = execute_job(job_id, broken, worker="w/1", rt=_runtime(redis_client, caller))
    # Then the job fails now, saying which field, with no provider call, instead of staying "running"
    assert isinstance(outcome, Failed) and caller.calls == 0
    assert outcome.error["kind"] == "invalid_request" and "messages" in outcome.error["message"]
    record = records.get_job(job_id)
    assert record.status == "failed" and record.error == outcome.error


def test_the_expiry_stage_ends_a_job_past_its_deadline_and_records_it(redis_client: redis.Redis) -> None:
    rt = _runtime(redis_client, CountingCaller())
    spec = _spec("too late")
    job_id = _job(spec, expires_in=-1)
    assert isinstance(_run(rt, job_id, spec).expiry(), Expired)
    assert records.get_job(job_id).status == "expired"
    # a job within its deadline goes on to the next stage
    on_time = _job(spec, expires_in=3600)
    assert _run(rt, on_time, spec).expiry() is None


def test_the_mode_stage_parks_a_job_the_mode_holds_back_and_lets_an_admitted_one_through(
    redis_client: redis.Redis,
) -> None:
    rt = _runtime(redis_client, CountingCaller())
    spec = _spec("held back")
    job_id = _job(spec)
    stage = _run(rt, job_id, spec)
    assert stage.parked_by_mode(Admission(run=True)) is None
    outcome = stage.parked_by_mode(Admission(run=False, wait_s=7.0, reason="operation mode EMERGENCY"))
    assert outcome == Parked(job_id, "llm.default", 7.0, "operation mode EMERGENCY", CAUSE_MODE)
    assert records.get_job(job_id).status == "parked"


def test_the_cache_stage_answers_a_repeat_without_the_provider_and_the_call_stage_fills_it(
    redis_client: redis.Redis,
) -> None:
    caller = CountingCaller()
    rt = _runtime(redis_client, caller)
    spec = _spec(f"deterministic {uuid.uuid4()}", temperature=0)
    # the first run finds nothing, takes the fill lock and calls; its answer is kept
    first = _run(rt, _job(spec), spec)
    plan = first.cache_plan(spec, Admission(run=True))
    assert plan.readable and first.from_cache(plan, Admission(run=True)) is None
    assert plan.fill_lock is not None and plan.fill_lock.held
    called = first.call(spec, plan)
    plan.release()
    assert isinstance(called, Succeeded) and not called.result.cached and caller.calls == 1
    # the same request again: answered from the cache, no provider call, recorded as succeeded
    job_id = _job(spec)
    second = _run(rt, job_id, spec)
    hit = second.from_cache(second.cache_plan(spec, Admission(run=True)), Admission(run=True))
    assert isinstance(hit, Succeeded) and hit.result.cached and hit.result.text == "fresh answer"
    assert caller.calls == 1 and records.get_job(job_id).status == "succeeded"


def test_one_process_has_one_runtime_whose_parts_are_made_once_whatever_the_threads() -> None:
    seen: list[tuple[int, int, int]] = []

    def use() -> None:
        rt = runtime()
        seen.append((id(rt), id(rt.leases), id(rt.effects)))

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 16 and len(set(seen)) == 1
