"""No loss at the edges of the queue: backpressure, idempotent submits, the outbox and its sweeper,
deadlines and dead-letter retries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from conftest import ON_AMQP

from ultra_tasks import JobFailedError, JobStatus, submit
from ultra_tasks.config import reset_settings
from ultra_tasks.errors import JobExpiredError, QueueFullError
from ultra_tasks.health import tasks as ops_tasks
from ultra_tasks.jobs.records import count_jobs, get_job
from ultra_tasks.jobs.submit import JobHandle

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("database")]


def test_submit_refuses_with_queue_full_when_queue_max_size_jobs_wait_and_records_nothing(
    broker_queues: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUE_MAX_SIZE", "3")
    reset_settings()
    try:
        for i in range(3):
            submit(f"waiting {i}", model="gpt-4o", priority="high")
        before = count_jobs()
        with pytest.raises(QueueFullError, match=r"3 jobs held .* high is refused from 3"):
            submit("one too many", model="gpt-4o", priority="high")
        assert count_jobs() == before
        assert broker_queues.llm_depth() == 3  # the three waiting jobs: the fourth was not enqueued
    finally:
        broker_queues.purge("llm.high")


def test_same_idempotency_key_returns_the_first_job_and_enqueues_once(broker_queues: Any) -> None:
    key = f"order-{uuid.uuid4().hex}"
    try:
        first = submit("charge once", model="gpt-4o", priority="low", idempotency_key=key)
        before = count_jobs()
        second = submit("charge once", model="gpt-4o", priority="low", idempotency_key=key)
        assert second.id == first.id
        assert count_jobs() == before
        assert broker_queues.depth("llm.low") == 1
    finally:
        broker_queues.purge("llm.low")


def test_a_job_message_names_the_job_in_its_headers_not_its_request(broker_queues: Any) -> None:
    from ultra_tasks.broker import consumed_queues
    from ultra_tasks.celery_app import app

    secret = f"private-{uuid.uuid4().hex}"
    try:
        handle = submit(f"summarize {secret}", model="gpt-4o", priority="low", metadata={"ref": secret})
        with app.connection_for_read() as conn:
            messages = [conn.default_channel.basic_get(q, no_ack=True) for q in consumed_queues(["llm.low"])]
        [message] = [m for m in messages if m is not None]
        # Celery would put a repr of the arguments (the request) into the headers Flower and logs show
        assert message.headers["argsrepr"] == f"[{handle.id!r}, <request>]"
        assert secret not in str(message.headers)
        body = message.body.decode() if isinstance(message.body, bytes) else str(message.body)
        assert secret in body  # the request itself travels in the body, for the worker
    finally:
        broker_queues.purge("llm.low")


PRODUCER = """
import sys
from ultra_tasks import submit
print(submit("made while the broker was down", model="gpt-4o-mini").id)
"""


def test_job_accepted_while_the_broker_is_down_is_published_by_the_sweeper_and_runs(
    worker_factory: Any, monkeypatch: pytest.MonkeyPatch, dead_broker_url: str
) -> None:
    # Given a producer whose broker cannot be reached (the database can)
    env = {**os.environ, "BROKER_URL": dead_broker_url}
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER], capture_output=True, text=True, env=env, timeout=90
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[-1]
    # Then the job is recorded, unpublished: the outbox holds it
    record = get_job(job_id)
    assert record.status == "queued" and record.published_at is None
    # When the sweeper runs (beat does this every interval)
    monkeypatch.setattr(ops_tasks, "UNPUBLISHED_GRACE_S", 0.0)
    assert ops_tasks.sweep() >= 1
    assert get_job(job_id).published_at is not None
    worker_factory(concurrency=2)
    assert JobHandle(job_id).result(timeout=30).text == "echo: made while the broker was down"


def test_job_past_its_deadline_ends_expired_without_a_provider_call(
    worker_factory: Any, fake_provider: Any
) -> None:
    handle = submit("too late", model="gpt-4.1-mini", priority="low", expires_in=0.3)
    time.sleep(0.5)
    worker_factory(concurrency=2)
    with pytest.raises(JobExpiredError):
        handle.result(timeout=30)
    assert handle.status() is JobStatus.EXPIRED
    assert fake_provider.stats()["by_model"].get("gpt-4.1-mini", 0) == 0


def test_failed_job_keeps_its_error_and_is_retried_from_the_dead_letter(
    worker_factory: Any, fake_provider: Any
) -> None:
    worker_factory(concurrency=2)
    fault = fake_provider.add_fault("status", model="gpt-4.1", status=422, message="unprocessable")
    handle = submit(f"retry me {uuid.uuid4().hex}", model="gpt-4.1")
    with pytest.raises(JobFailedError):
        handle.result(timeout=30)
    assert handle.record()["error"]["status_code"] == 422
    fake_provider.remove_fault(fault)
    out = subprocess.run(
        [sys.executable, "-m", "ultra_tasks.cli", "jobs", "retry", handle.id],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = handle.result(timeout=30)
    assert result.text.startswith("echo: retry me")
    assert handle.record()["attempts"] == 1  # a fresh budget
    again = subprocess.run(
        [sys.executable, "-m", "ultra_tasks.cli", "jobs", "retry", handle.id],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
    )
    assert again.returncode == 2 and "only failed or expired jobs retry" in again.stderr


def test_a_published_job_whose_message_the_broker_lost_is_republished_by_the_sweeper(
    broker_queues: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ON_AMQP:
        pytest.skip("RabbitMQ has no window in which a delivered message is in neither place")
    monkeypatch.setattr(ops_tasks, "LOST_MESSAGE_GRACE_S", 0.0)
    try:
        lost = submit("message lost", model="gpt-4o-mini", priority="high")
        # kombu took the message off the list and Redis went away before it was noted as unacknowledged
        broker_queues.drop_messages("llm.high")
        assert ops_tasks.sweep() >= 1
        assert broker_queues.depth("llm.high") == 1
        # a job whose message is still waiting is not published again
        submit("still waiting", model="gpt-4o-mini", priority="high")
        ops_tasks.sweep()
        assert broker_queues.depth("llm.high") == 2
        assert get_job(lost.id).status == "queued"
    finally:
        broker_queues.purge("llm.high")
