"""The seed's PersistentRequestQueue and RetryableRequest on the Celery queues, with the JSON-lines spool
for when the database (and so the outbox) cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from ultra_tasks import JobHandle, JobValidationError, PersistentRequestQueue, RetryableRequest, app

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("database")]


class LLMClient:
    """Stands in for the seed's llm_client: its generate method is what a RetryableRequest names."""

    def generate(self, prompt: str, model: str) -> str:
        raise AssertionError("never called in the producer: the request is queued by name")


llm_client = LLMClient()


async def test_seed_usage_enqueues_an_llm_request_that_a_worker_answers(
    llm_worker: Any, tmp_path: Path
) -> None:
    request_queue = PersistentRequestQueue(storage_path=tmp_path / "ultra_request_queue.jsonl", max_size=1000)
    request = RetryableRequest(
        operation_func=llm_client.generate, args=["queued by the seed API", "gpt-4o"], max_retries=3
    )
    job_id = await request_queue.enqueue(request, priority=0)
    await request_queue.process_queue()  # the seed starts processing; here it replays the (empty) spool
    result = JobHandle(job_id).result(timeout=30)
    assert result.text == "echo: queued by the seed API"
    assert JobHandle(job_id).record()["priority"] == "default"


def test_registered_operations_run_by_name_with_json_arguments(llm_worker: Any, tmp_path: Path) -> None:
    queue = PersistentRequestQueue(storage_path=tmp_path / "q.jsonl")
    task_id = queue.enqueue_sync(RetryableRequest("ultra.echo", [1, "two"], kwargs={"three": 3}), priority=5)
    assert AsyncResult(task_id, app=app).get(timeout=30) == {"args": [1, "two"], "kwargs": {"three": 3}}


def test_unregistered_callables_and_non_json_arguments_are_refused() -> None:
    with pytest.raises(JobValidationError, match="not a registered operation"):
        RetryableRequest(operation_func=print, args=["x"])
    with pytest.raises(JobValidationError, match="JSON"):
        RetryableRequest("ultra.echo", args=[object()])
    with pytest.raises(JobValidationError, match="max_retries"):
        RetryableRequest("ultra.echo", args=[], max_retries=-1)


PRODUCER = """
import asyncio, json, sys
from ultra_tasks import PersistentRequestQueue, RetryableRequest
queue = PersistentRequestQueue(storage_path=sys.argv[1])
request = RetryableRequest("llm.generate", ["spooled while the database was down", "gpt-4o-mini"])
print(asyncio.run(queue.enqueue(request, priority=1)))
"""


def test_request_made_while_the_database_is_down_is_spooled_as_json_lines_and_replayed(
    llm_worker: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool.jsonl"
    # Given a producer whose database cannot be reached
    env = {**os.environ, "DATABASE_URL": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}
    out = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(spool)], capture_output=True, text=True, env=env, timeout=90
    )
    assert out.returncode == 0, out.stderr
    request_id = out.stdout.strip().splitlines()[-1]
    # Then the request waits in the spool, as readable JSON (never pickle)
    [line] = spool.read_text().splitlines()
    assert json.loads(line) == {
        "id": request_id,
        "priority": "high",
        "request": {
            "operation": "llm.generate",
            "args": ["spooled while the database was down", "gpt-4o-mini"],
            "kwargs": {},
            "max_retries": 3,
        },
    }
    # and a tampered line is set aside, not run
    with open(spool, "a") as fh:
        fh.write("cos\nsystem\n(S'echo pwned'\ntR.\n")
    # When the database is back, replaying sends it once, even if replayed again
    queue = PersistentRequestQueue(storage_path=spool)
    assert queue.replay() == 1
    assert queue.pending() == 0
    assert (tmp_path / "spool.jsonl.bad").exists()
    assert queue.replay() == 0
    handle = JobHandle(request_id)
    assert handle.result(timeout=30).text == "echo: spooled while the database was down"
    assert handle.record()["priority"] == "high"
