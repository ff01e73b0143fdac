"""JobSpec (jobs/spec.py): the typed request that is recorded, signed, queued and run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ultra_tasks.config import load_settings
from ultra_tasks.errors import JobValidationError
from ultra_tasks.jobs.spec import MAX_MODEL_CHARS, JobSpec
from ultra_tasks.jobs.validation import validate_submission

GOOD: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "max_tokens": 64,
    "temperature": 0,
    "params": {"seed": 7, "stop": ["\n"]},
    "metadata": {"team": "search"},
    "cache": False,
    "fallback": True,
    "chain": ["openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest"],
}


def test_a_spec_round_trips_through_its_payload_unchanged() -> None:
    spec = JobSpec.parse(GOOD, load_settings())
    assert JobSpec.from_payload(spec.to_payload()) == spec
    assert spec.to_payload()["temperature"] == 0.0 and spec.chain == tuple(GOOD["chain"])
    request = spec.request
    assert request.model == "gpt-4o-mini" and [m.role for m in request.messages] == ["system", "user"]
    assert request.params == {"seed": 7, "stop": ["\n"]}


def test_a_payload_without_a_chain_has_no_chain_key_and_an_older_payload_reads_with_defaults() -> None:
    older = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    spec = JobSpec.from_payload(older)
    assert (spec.cache, spec.fallback, spec.chain, spec.metadata) == (True, True, None, {})
    assert "chain" not in spec.to_payload()


def test_a_spec_cannot_be_changed_after_it_is_made() -> None:
    spec = JobSpec.parse(GOOD)
    with pytest.raises(ValidationError):
        spec.model = "gpt-4o"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"model": "m" * (MAX_MODEL_CHARS + 1)}, "model", "over the limit of 128"),
        ({"model": 5}, "model", "expected a string"),
        ({"messages": []}, "messages", "must not be empty"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0]", "unknown key 'name'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "system, user, assistant"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "messages", "at least one user message"),
        ({"max_tokens": True}, "max_tokens", "expected an integer"),
        ({"max_tokens": 10**9}, "max_tokens", "expected an integer from 1 to"),
        ({"temperature": float("nan")}, "temperature", "from 0 to 2"),
        ({"params": {"logit_bias": {}}}, "params.logit_bias", "unknown parameter"),
        ({"params": {"seed": float("inf")}}, "params.seed", "JSON-serializable"),
        ({"metadata": {"when": object()}}, "metadata", "JSON-serializable"),
        ({"cache": "yes"}, "cache", "expected true or false"),
        ({"chain": ["nobody:gpt-4o"]}, "chain[0]", "provider:model"),
        ({"chain": ["openai:" + "m" * 200]}, "chain[0]", "over the limit of 128"),
        ({"owner": "x"}, "owner", "unknown field (a job has: model, messages"),
    ],
)
def test_every_bad_field_is_refused_by_name(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(JobValidationError) as info:
        JobSpec.parse({**GOOD, **change}, load_settings())
    assert info.value.field == field
    assert words in info.value.message


def test_the_settings_bounds_apply_where_a_job_is_accepted_not_where_a_worker_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job accepted by a producer whose limits allow a long chain and big metadata
    roomy = {"chain": ["openai:gpt-4o-mini"] * 6, "metadata": {"notes": "n" * 3000}}
    accepted = JobSpec.parse({**GOOD, **roomy}, load_settings())
    # Then a producer with tighter limits refuses it, naming the setting ...
    monkeypatch.setenv("JOB_MAX_CHAIN_LENGTH", "4")
    monkeypatch.setenv("JOB_MAX_METADATA_BYTES", "1024")
    tight = load_settings()
    with pytest.raises(JobValidationError, match="JOB_MAX_CHAIN_LENGTH"):
        JobSpec.parse({**GOOD, "chain": roomy["chain"]}, tight)
    with pytest.raises(JobValidationError, match="JOB_MAX_METADATA_BYTES"):
        JobSpec.parse({**GOOD, "metadata": roomy["metadata"]}, tight)
    # ... but a worker reads the accepted job's payload as it was accepted: never refused after acceptance
    assert JobSpec.from_payload(accepted.to_payload()) == accepted


def test_the_parking_lots_flag_is_not_part_of_the_request() -> None:
    payload = {**JobSpec.parse(GOOD).to_payload(), "_slot_reserved": True}
    assert "_slot_reserved" not in JobSpec.from_payload(payload).to_payload()


def test_submit_turns_a_prompt_into_messages_and_blames_the_prompt_for_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USE_FAKE_PROVIDER", "1")
    settings = load_settings()
    job = validate_submission(settings, prompt="hello", system="be brief", model="gpt-4o-mini")
    assert [(m.role, m.content) for m in job.spec.messages] == [("system", "be brief"), ("user", "hello")]
    assert job.payload == job.spec.to_payload() and job.model == "gpt-4o-mini"
    monkeypatch.setenv("MAX_INPUT_CHARS", "10")
    with pytest.raises(JobValidationError) as info:
        validate_submission(load_settings(), prompt="x" * 11, model="gpt-4o-mini")
    assert info.value.field == "prompt" and "11 characters, over the limit of 10" in info.value.message
