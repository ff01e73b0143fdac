"""Bad input to submit() is refused with an error naming the field, and nothing is recorded or enqueued."""

from __future__ import annotations

from typing import Any

import pytest

import ultra_tasks
from ultra_tasks import JobStatus, JobValidationError, UnknownModelError, submit
from ultra_tasks.jobs.records import count_jobs

pytestmark = pytest.mark.timeout(60)

OK: dict[str, Any] = {"model": "gpt-4o-mini"}
BAD_INPUTS = [
    pytest.param({"prompt": "", **OK}, "prompt", id="empty-prompt"),
    pytest.param({"prompt": "   ", **OK}, "prompt", id="blank-prompt"),
    pytest.param({"messages": [], **OK}, "messages", id="empty-messages"),
    pytest.param(
        {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], **OK}, "prompt", id="both"
    ),
    pytest.param({**OK}, "prompt", id="neither"),
    pytest.param({"prompt": 42, **OK}, "prompt", id="prompt-not-text"),
    pytest.param({"messages": "hello", **OK}, "messages", id="messages-a-string"),
    pytest.param({"messages": ["hello"], **OK}, "messages[0]", id="message-not-object"),
    pytest.param({"messages": [{"role": "bot", "content": "x"}], **OK}, "messages[0].role", id="bad-role"),
    pytest.param(
        {"messages": [{"role": "user", "content": ""}], **OK}, "messages[0].content", id="empty-content"
    ),
    pytest.param({"messages": [{"role": "user"}], **OK}, "messages[0].content", id="missing-content"),
    pytest.param(
        {"messages": [{"role": "user", "content": "x", "name": "y"}], **OK},
        "messages[0]",
        id="unknown-message-key",
    ),
    pytest.param({"messages": [{"role": "system", "content": "x"}], **OK}, "messages", id="no-user-message"),
    pytest.param(
        {"prompt": "hi", "model": "gpt-4o", "priority": "urgent"}, "priority", id="unknown-priority"
    ),
    pytest.param({"prompt": "hi", "model": "gpt-4o", "priority": 0}, "priority", id="numeric-priority"),
    pytest.param({"prompt": "hi", "model": "llama-3-70b"}, "model", id="model-no-provider-serves"),
    pytest.param({"prompt": "hi", "model": ""}, "model", id="empty-model"),
    pytest.param({"prompt": "x" * 200_001, **OK}, "prompt", id="input-over-size-limit"),
    pytest.param({"prompt": "hi", "max_tokens": 0, **OK}, "max_tokens", id="zero-max-tokens"),
    pytest.param({"prompt": "hi", "max_tokens": "10", **OK}, "max_tokens", id="text-max-tokens"),
    pytest.param({"prompt": "hi", "temperature": 3, **OK}, "temperature", id="temperature-out-of-range"),
    pytest.param({"prompt": "hi", "temperature": float("nan"), **OK}, "temperature", id="temperature-nan"),
    pytest.param({"prompt": "hi", "params": {"top_p": {1, 2}}, **OK}, "params.top_p", id="param-not-json"),
    pytest.param(
        {"prompt": "hi", "params": {"logit_bias_x": 1}, **OK}, "params.logit_bias_x", id="unknown-param"
    ),
    pytest.param({"prompt": "hi", "metadata": {"when": object()}, **OK}, "metadata", id="metadata-not-json"),
    pytest.param({"prompt": "hi", "metadata": [1], **OK}, "metadata", id="metadata-not-object"),
    pytest.param({"prompt": "hi", "cache": "no", **OK}, "cache", id="cache-not-bool"),
    pytest.param({"prompt": "hi", "fallback": "yes", **OK}, "fallback", id="fallback-not-bool"),
    pytest.param({"prompt": "hi", "chain": "openai:gpt-4o", **OK}, "chain", id="chain-a-string"),
    pytest.param({"prompt": "hi", "chain": [], **OK}, "chain", id="chain-empty"),
    pytest.param(
        {"prompt": "hi", "chain": ["openai:gpt-4o", "gpt-4o"], **OK}, "chain[1]", id="chain-entry-no-provider"
    ),
    pytest.param({"prompt": "hi", "chain": ["mistral:large"], **OK}, "chain[0]", id="chain-unknown-provider"),
    pytest.param(
        {"prompt": "hi", "idempotency_key": "", **OK}, "idempotency_key", id="empty-idempotency-key"
    ),
    pytest.param({"prompt": "hi", "expires_in": -1, **OK}, "expires_in", id="negative-deadline"),
    pytest.param({"prompt": "hi", "job_id": "not-a-uuid", **OK}, "job_id", id="job-id-not-a-uuid"),
    # bounds: every field has one, and the error names the setting that moves it
    pytest.param({"prompt": "hi", "model": "gpt-4o-" + "x" * 5000}, "model", id="model-name-too-long"),
    pytest.param(
        {"prompt": "hi", "chain": ["openai:gpt-4o"] * 9, **OK}, "chain", id="chain-longer-than-the-limit"
    ),
    pytest.param(
        {"prompt": "hi", "chain": ["openai:gpt-" + "x" * 200], **OK}, "chain[0]", id="chain-model-too-long"
    ),
    pytest.param(
        {"prompt": "hi", "params": {"stop": ["x" * 100] * 50}, **OK}, "params", id="params-over-size-limit"
    ),
    pytest.param(
        {"prompt": "hi", "metadata": {"blob": "x" * 20_000}, **OK}, "metadata", id="metadata-over-size-limit"
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "x"}] * 2049, **OK},
        "messages",
        id="more-messages-than-the-limit",
    ),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_INPUTS)
def test_bad_input_names_the_field_and_records_and_enqueues_nothing(
    kwargs: dict[str, Any], field: str, broker_queues: Any, database: str
) -> None:
    jobs_before, queues_before = count_jobs(), broker_queues.llm_depth()
    with pytest.raises(JobValidationError) as info:
        submit(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert count_jobs() == jobs_before
    assert broker_queues.llm_depth() == queues_before


def test_unknown_model_error_lists_known_routes_and_how_to_add_one(database: str) -> None:
    with pytest.raises(UnknownModelError, match=r"llama-3.*gpt-\*.*MODEL_MAP"):
        submit("hi", model="llama-3")


def test_input_size_limit_is_configurable(monkeypatch: pytest.MonkeyPatch, database: str) -> None:
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("MAX_INPUT_CHARS", "10")
    reset_settings()
    with pytest.raises(JobValidationError, match="11 characters, over the limit of 10"):
        submit("x" * 11, model="gpt-4o")


def test_result_times_out_with_a_clear_error_while_no_worker_takes_the_job(
    broker_queues: Any, database: str
) -> None:
    handle = submit("nobody home", model="gpt-4o", priority="low")
    try:
        with pytest.raises(ultra_tasks.JobTimeoutError, match=r"no result after 0\.5s"):
            handle.result(timeout=0.5)
        assert handle.status() is JobStatus.QUEUED
        assert broker_queues.depth("llm.low") == 1
    finally:
        broker_queues.purge("llm.low")  # leave no stray job for later tests


def test_the_message_count_limit_is_configurable_and_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("JOB_MAX_MESSAGES", "3")
    reset_settings()
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(JobValidationError, match=r"has 4 messages, over the limit of 3 \(JOB_MAX_MESSAGES\)"):
        submit(messages=[*turns, *turns], model="gpt-4o")
