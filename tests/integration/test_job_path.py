"""The job path end to end: submit → SQL record → Celery queue → real worker → provider over HTTP → result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from ultra_tasks import JobFailedError, JobHandle, JobStatus, submit

pytestmark = pytest.mark.timeout(120)

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}


def test_jobs_at_every_priority_through_both_sdks_complete_and_read_back_through_fresh_handles(
    llm_worker: Any, fake_provider: Any
) -> None:
    # Given a running worker, when jobs are submitted at all three priorities to both providers
    submitted = {
        (provider, priority): submit(f"say {priority} via {provider}", model=model, priority=priority)
        for provider, model in MODELS.items()
        for priority in ("high", "default", "low")
    }
    # then each result, read through a handle made from the id alone, says who served it and how
    for (provider, priority), handle in submitted.items():
        result = JobHandle(handle.id).result(timeout=30)
        assert result.job_id == handle.id
        assert result.text == f"echo: say {priority} via {provider}"
        assert result.provider == provider
        assert result.model == MODELS[provider]
        assert result.usage == {"input_tokens": 4, "output_tokens": 5, "total_tokens": 9}
        assert result.latency_ms > 0
        assert result.cached is False and result.fallback_used is False
        assert JobHandle(handle.id).status() is JobStatus.SUCCEEDED
    # and the provider saw exactly one request per job, through each SDK
    stats = fake_provider.stats()
    assert stats["by_api"] == {"openai": 3, "anthropic": 3}


def test_job_record_tracks_request_result_provider_attempts_and_timings(llm_worker: Any) -> None:
    handle = submit(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        model="gpt-4o",
        priority="high",
        max_tokens=50,
        temperature=0,
        metadata={"ticket": 7},
    )
    handle.result(timeout=30)
    record = handle.record()
    assert record["status"] == "succeeded"
    assert record["queue"] == "llm.high"
    assert record["request"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert record["request"]["metadata"] == {"ticket": 7}
    assert record["result"]["text"] == "echo: hi"
    assert record["provider"] == "openai" and record["model_used"] == "gpt-4o"
    assert record["attempts"] == 1
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    # the worker process that ran it: its node name and pid (a restart under the same name is another)
    assert record["worker"] == f"{llm_worker.name}/{llm_worker.proc.pid}"


def test_result_and_status_work_from_another_process_given_the_id(llm_worker: Any) -> None:
    handle = submit("from afar", model="claude-3-5-sonnet-latest")
    code = (
        "import json, sys; from ultra_tasks import JobHandle; h = JobHandle(sys.argv[1]); "
        "r = h.result(timeout=30); print(json.dumps({'status': h.status().value, 'text': r.text}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, handle.id],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "status": "succeeded",
        "text": "echo: from afar",
    }


def test_permanent_provider_error_fails_the_job_with_a_classified_error(
    llm_worker: Any, fake_provider: Any
) -> None:
    fake_provider.add_fault("status", model="gpt-4.1", status=400, message="bad thing")
    handle = submit("will fail", model="gpt-4.1")
    with pytest.raises(JobFailedError) as info:
        handle.result(timeout=30)
    assert info.value.error["kind"] == "permanent"
    assert info.value.error["status_code"] == 400
    assert info.value.error["provider"] == "openai"
    assert handle.status() is JobStatus.FAILED
    assert handle.record()["error"]["type"] == "ProviderBadRequestError"


def test_worker_logs_say_a_job_succeeded_without_its_prompt_or_answer(llm_worker: Any) -> None:
    secret = f"private-{uuid.uuid4().hex}"
    handle = submit(f"summarize {secret}", model="gpt-4o-mini")
    assert secret in handle.result(timeout=30).text
    deadline = time.monotonic() + 5
    while f"ultra.run_job[{handle.id}] succeeded" not in llm_worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = llm_worker.log()
    assert f"ultra.run_job[{handle.id}] succeeded" in log
    assert secret not in log


def test_the_succeeded_event_flower_shows_carries_no_answer(llm_worker: Any) -> None:
    # Flower switches task events on and shows each task-succeeded event's "result": a repr Celery builds
    # of the return value. A job's return value is the model's answer, which stays in the job table.
    import threading

    from ultra_tasks.celery_app import app

    secret = f"private-{uuid.uuid4().hex}"
    events: list[dict[str, Any]] = []
    seen = threading.Event()
    app.control.enable_events(destination=[llm_worker.name])
    try:
        with app.connection_for_read() as conn:

            def on_event(event: dict[str, Any]) -> None:
                events.append(event)
                if event.get("type") == "task-succeeded":
                    seen.set()

            receiver = app.events.Receiver(conn, handlers={"*": on_event})
            listener = threading.Thread(
                target=lambda: receiver.capture(limit=None, timeout=None, wakeup=True), daemon=True
            )
            listener.start()
            time.sleep(0.5)  # the receiver's fanout queue is bound before the job runs
            handle = submit(f"summarize {secret}", model="gpt-4o-mini")
            assert secret in handle.result(timeout=30).text
            assert seen.wait(10), f"no task-succeeded event; saw {[e.get('type') for e in events]}"
            receiver.should_stop = True
    finally:
        app.control.disable_events(destination=[llm_worker.name])
    succeeded = [e for e in events if e.get("type") == "task-succeeded" and e.get("uuid") == handle.id]
    assert succeeded, "the job's own task-succeeded event"
    assert all(secret not in json.dumps(e) for e in events)


def test_a_worker_imports_the_provider_sdks_at_start_not_in_its_first_jobs() -> None:
    # Imported by the first job instead, the SDKs (about a second of CPU) held every job the pool had taken
    # meanwhile on the import lock: at 200 threads, a whole first wave. worker_init imports them.
    probe = (
        "import sys\n"
        "from ultra_tasks.celery_app import _prepare_worker\n"
        "import ultra_tasks.jobs.tasks\n"
        "before = sorted(m for m in ('openai', 'anthropic') if m in sys.modules)\n"
        "_prepare_worker()\n"
        "after = sorted(m for m in ('openai', 'anthropic') if m in sys.modules)\n"
        "print(before, after)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[] ['anthropic', 'openai']"
