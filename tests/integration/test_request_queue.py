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


def test_a_submit_whose_database_drops_after_recording_returns_the_job_and_spools_nothing(
    private_postgres: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultra_tasks.config import reset_settings
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.jobs import records

    monkeypatch.setenv("DATABASE_URL", private_postgres.url)
    reset_settings()
    upgrade_schema()
    # Given a database that goes away between recording the job and noting that it was published
    really_mark_published = records.mark_published

    def database_drops_first(job_id: str) -> None:
        private_postgres.stop()
        really_mark_published(job_id)

    monkeypatch.setattr(records, "mark_published", database_drops_first)
    queue = PersistentRequestQueue(storage_path=tmp_path / "spool.jsonl")
    # When a request is enqueued
    job_id = queue.enqueue_sync(RetryableRequest("llm.generate", ["recorded once", "gpt-4o-mini"]))
    # Then the caller gets the job (it exists and is published), and nothing waits in the spool to make
    # a second one
    assert queue.pending() == 0
    private_postgres.start()
    assert records.get_job(job_id).status == "queued"
    assert records.count_jobs() == 1


def test_submitting_again_with_the_id_of_an_unknown_outcome_makes_no_second_job(tmp_path: Path) -> None:
    from ultra_tasks import submit
    from ultra_tasks.jobs import records

    before = records.count_jobs()
    first = submit("maybe recorded", model="gpt-4o-mini", job_id="7d9c4c52-1a55-4a4e-8d5e-0a1b2c3d4e5f")
    again = submit("maybe recorded", model="gpt-4o-mini", job_id=first.id)
    assert again.id == first.id and records.count_jobs() == before + 1


def _spool_line(i: int) -> str:
    request = RetryableRequest("ultra.echo", [i]).to_dict()
    return (
        json.dumps({"id": f"00000000-0000-4000-8000-{i:012d}", "priority": "low", "request": request}) + "\n"
    )


def test_requests_spooled_by_another_process_during_a_replay_are_kept(tmp_path: Path) -> None:
    import threading
    import time

    from ultra_tasks.errors import DependencyUnavailableError

    spool = tmp_path / "spool.jsonl"
    spool.write_text("".join(_spool_line(i) for i in range(20)))
    replayer = PersistentRequestQueue(storage_path=spool)
    appender = PersistentRequestQueue(storage_path=spool)  # another producer process on the same spool

    def broker_still_down(entry: dict[str, Any], level: str, request_id: str) -> str:
        time.sleep(0.02)
        raise DependencyUnavailableError("broker", "still down")

    replayer._send = broker_still_down  # type: ignore[method-assign]
    replay = threading.Thread(target=replayer.replay)
    replay.start()
    for i in range(20, 40):
        appender._spool(RetryableRequest("ultra.echo", [i]).to_dict(), "low", f"r-{i}", RuntimeError("down"))
        time.sleep(0.005)
    replay.join(30)
    # every request is still there, the replayed ones in their order
    assert appender.pending() == 40
    ids = [json.loads(line)["id"] for line in spool.read_text().splitlines()]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 40


def test_a_spooled_request_the_system_refuses_is_set_aside_and_the_rest_are_sent(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    refused = RetryableRequest("llm.generate", ["x", "no-such-model-anywhere"]).to_dict()
    bad_line = json.dumps(
        {"id": "00000000-0000-4000-8000-00000000000a", "priority": "low", "request": refused}
    )
    spool.write_text(_spool_line(1) + bad_line + "\n" + _spool_line(2))
    queue = PersistentRequestQueue(storage_path=spool)
    assert queue.replay() == 2
    assert queue.pending() == 0
    [rejected] = (tmp_path / "spool.jsonl.rejected").read_text().splitlines()
    assert "no-such-model-anywhere" in json.loads(rejected)["rejected"]
