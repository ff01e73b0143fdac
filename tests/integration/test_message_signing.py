"""Workers run only messages signed with the key they share with producers (ultra_tasks/signing.py): a job
sent to the broker directly (as Flower's /api/task/async-apply would send it, or anyone who can write to
Redis) is refused and counted, never run on the organisation's API keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult

from ultra_tasks import PersistentRequestQueue, RetryableRequest, app, keys, submit
from ultra_tasks.broker import publish_options
from ultra_tasks.config import get_settings
from ultra_tasks.jobs.queue import OPERATION_TASK
from ultra_tasks.jobs.validation import build_request
from ultra_tasks.providers.fake_server import prompt_key
from ultra_tasks.signing import sign, verify

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers")]


def _refused(redis_client: Any, kind: str = "job") -> int:
    return int(
        redis_client.hget(keys.metrics_jobs(), json.dumps(["refused", kind], separators=(",", ":"))) or 0
    )


def test_a_job_message_without_a_valid_signature_is_refused_counted_and_never_calls_a_provider(
    llm_worker: Any, fake_provider: Any, redis_client: Any
) -> None:
    before = _refused(redis_client)
    payload = build_request(get_settings(), prompt="forged", model="gpt-4o-mini").to_dict()
    forged = [
        ({}, "no signature"),
        ({"sig": "v1:" + "0" * 64}, "a made-up signature"),
        # a real signature, over another request: the message was altered on its way
        ({"sig": sign("job", "x", {**payload, "max_tokens": 1})}, "a signature of something else"),
    ]
    for kwargs, _why in forged:
        job_id = str(uuid.uuid4())
        app.send_task(
            "ultra.run_job",
            args=[job_id, payload],
            kwargs=kwargs,
            task_id=job_id,
            **publish_options("llm.high"),
        )
    deadline = time.monotonic() + 30
    while _refused(redis_client) < before + 3:  # counted fleet-wide, in the worker's next metrics flush
        assert time.monotonic() < deadline, "the worker did not refuse three messages"
        time.sleep(0.1)
    assert llm_worker.log().count("refused job message") >= 3
    # while a signed job from a producer runs as usual
    assert submit("signed", model="gpt-4o-mini", priority="high").result(timeout=30).text == "echo: signed"
    # the forged request never reached the provider, the signed one once (counted by prompt: a job an
    # earlier test left queued may also run on this worker)
    by_prompt = fake_provider.stats()["by_prompt"]
    assert by_prompt.get(prompt_key("forged"), 0) == 0, by_prompt
    assert by_prompt.get(prompt_key("signed"), 0) == 1, by_prompt


def test_an_operation_message_without_a_valid_signature_is_refused_counted_and_never_runs(
    llm_worker: Any, redis_client: Any
) -> None:
    # Given a queued operation as a producer would send it, but signed over other arguments
    before = _refused(redis_client, "operation")
    entry = RetryableRequest("ultra.echo", ["forged"]).to_dict()
    request_id = str(uuid.uuid4())
    altered = sign("operation", request_id, {**entry, "args": ["something else"]})
    app.send_task(
        OPERATION_TASK,
        args=[entry],
        kwargs={"sig": altered},
        task_id=request_id,
        **publish_options("llm.default"),
    )
    # Then the worker refuses it and counts it, and the operation never ran (it would be marked done)
    deadline = time.monotonic() + 30
    while _refused(redis_client, "operation") < before + 1:
        assert time.monotonic() < deadline, "the worker did not refuse the operation"
        time.sleep(0.1)
    assert f"refused operation message {request_id}" in llm_worker.log()
    assert not redis_client.exists(keys.operation_done(request_id))
    # while one signed by a producer runs
    queue = PersistentRequestQueue(storage_path=Path(get_settings().var_dir) / "t16-signing.jsonl")
    task_id = queue.enqueue_sync(RetryableRequest("ultra.echo", ["signed"]))
    assert AsyncResult(task_id, app=app).get(timeout=30) == {"args": ["signed"], "kwargs": {}}


def test_a_signature_made_with_the_previous_key_is_accepted_during_a_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ultra_tasks.config import reset_settings

    old, new = "o" * 40, "n" * 40
    monkeypatch.setenv("ULTRA_SECRET_KEY", old)
    reset_settings()
    signed_with_old = sign("job", "j", {"a": 1})
    monkeypatch.setenv("ULTRA_SECRET_KEY", new)
    reset_settings()
    assert not verify("job", "j", {"a": 1}, signed_with_old)
    monkeypatch.setenv("ULTRA_SECRET_KEY_PREVIOUS", old)
    reset_settings()
    assert verify("job", "j", {"a": 1}, signed_with_old)
    assert sign("job", "j", {"a": 1}) != signed_with_old  # everything signs with the new key


def test_without_a_configured_key_processes_on_one_machine_share_one_generated_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRA_SECRET_KEY")}
    env["ULTRA_VAR_DIR"] = str(tmp_path / "var")
    code = "from ultra_tasks.signing import sign; print(sign('job', 'j', {'a': 1}))"
    runs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    signatures = {p.communicate(timeout=60)[0].strip() for p in runs}
    assert len(signatures) == 1 and next(iter(signatures)).startswith("v1:")
    key_file = tmp_path / "var" / "secret.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_short_secret_key_is_refused_at_start_naming_the_variable() -> None:
    from ultra_tasks.config import load_settings
    from ultra_tasks.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="ULTRA_SECRET_KEY"):
        load_settings(ultra_secret_key="short")
