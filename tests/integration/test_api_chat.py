"""The OpenAI-compatible API's chat completions, keys and errors, through the official ``openai`` SDK
against `ultra api` (a real process), a real worker, Redis, SQL and the fake provider."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from api_server import ApiServer, new_key
from conftest import ultra_cli

from ultra_tasks import JobHandle
from ultra_tasks.jobs import records
from ultra_tasks.providers.fake_server import prompt_key

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def api(llm_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api"), env={"API_WAIT_TIMEOUT": "5"}).start()
    yield server
    server.stop()


@pytest.fixture
def key(api: ApiServer) -> str:
    return new_key(f"tenant-{uuid.uuid4().hex[:8]}")


def test_chat_completion_through_the_sdk_is_a_recorded_job_of_the_tenant_with_usage(
    api: ApiServer, key: str
) -> None:
    client = api.client(key)
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello api"}],
        max_tokens=50,
        temperature=0,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: hello api"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    # the completion's id is the job's: its record says who asked, at which priority
    row = records.get_job(completion.id)
    assert row.status == "succeeded" and row.priority == "default" and row.tenant is not None
    assert JobHandle(completion.id).result(timeout=5).text == "echo: hello api"
    # and GET /v1/jobs/{id} answers its state and result to its tenant
    job = client.get(f"/jobs/{completion.id}", cast_to=httpx.Response).json()
    assert job["status"] == "succeeded"
    assert job["result"]["choices"][0]["message"]["content"] == "echo: hello api"


def test_streaming_answers_openai_sse_chunks_ending_with_usage(api: ApiServer, key: str) -> None:
    client = api.client(key)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream me " + "long text " * 20}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me " + "long text " * 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert records.get_job(chunks[0].id).status == "succeeded"


def test_x_priority_header_chooses_the_jobs_queue(api: ApiServer, key: str) -> None:
    client = api.client(key)
    for priority, queue in (("high", "llm.high"), ("low", "llm.low")):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"at {priority}"}],
            extra_headers={"X-Priority": priority},
        )
        assert records.get_job(completion.id).queue == queue
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={"X-Priority": "urgent"}
        )
    assert refused.value.body["param"] == "X-Priority"  # type: ignore[index]


def test_a_missing_unknown_or_revoked_key_is_refused_with_401(api: ApiServer) -> None:
    for bad in ("", "uk-not-a-key"):
        client = openai.OpenAI(api_key=bad or "placeholder", base_url=api.url + "/v1", max_retries=0)
        headers = {"Authorization": ""} if not bad else None
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers=headers
            )
        assert refused.value.status_code == 401
        assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    # a key made and then revoked with the CLI: the key is the last line, and never listed
    made = ultra_cli("keys", "create", "--tenant", "revoked-co", "--rpm", "100", "--budget-usd", "2.5")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    client = api.client(key)
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok"}])
    listed = ultra_cli("keys", "list", "--json")
    assert key not in listed.stdout and key[:20] not in listed.stdout
    key_id = next(k["id"] for k in json.loads(listed.stdout) if k["tenant"] == "revoked-co")
    assert ultra_cli("keys", "revoke", key_id).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    # the key never reached the API's log
    assert key not in api.log()


def test_bad_parameters_are_refused_with_400_naming_the_parameter(api: ApiServer, key: str) -> None:
    client = api.client(key)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 3}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.[0].role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"extra_body": {"bogus": 1}}, "bogus"),
    ]
    for override, param in cases:
        args: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **override}
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**args)
        assert refused.value.body["param"] == param, (override, refused.value.body)  # type: ignore[index]
        assert refused.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert unknown.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_a_body_over_the_bound_is_refused_with_413_before_it_is_read(api: ApiServer, key: str) -> None:
    huge = "x" * 2_000_000
    response = httpx.post(
        api.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        content=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": huge}]}),
        timeout=30,
    )
    assert response.status_code == 413
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.usefixtures("fresh_latencies")
def test_past_the_wait_the_answer_is_504_naming_the_job_which_goes_on(
    api: ApiServer, key: str, fake_provider: Any
) -> None:
    fake_provider.add_fault("latency", model="gpt-4o", ms=7000)
    client = api.client(key)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as late:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "slow one"}])
    assert late.value.status_code == 504
    assert 4.5 < time.monotonic() - started < 7
    job_id = late.value.response.headers["X-Job-Id"]
    assert job_id in late.value.message
    # the job goes on, and its tenant follows it by id
    deadline = time.monotonic() + 20
    while True:
        job = client.get(f"/jobs/{job_id}", cast_to=httpx.Response).json()
        if job["status"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert job["result"]["choices"][0]["message"]["content"] == "echo: slow one"
    # another tenant is not told it exists
    other = api.client(new_key("someone-else"))
    with pytest.raises(openai.NotFoundError):
        other.get(f"/jobs/{job_id}", cast_to=httpx.Response)


def test_a_full_queue_is_refused_with_429(
    api: ApiServer, key: str, redis_client: Any, tmp_path: Path
) -> None:
    from ultra_tasks import keys

    # every slot of the bound taken (QUEUE_MAX_SIZE, 1000 by default) by jobs admitted just now
    now_ms = int(time.time() * 1000)
    redis_client.zadd(keys.admitted("high"), {f"held-{i}": now_ms for i in range(1000)})
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            api.client(key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert refused.value.body["code"] == "queue_full"  # type: ignore[index]
    finally:
        redis_client.delete(keys.admitted("high"))


def test_a_tenants_rpm_is_enforced_with_429(api: ApiServer) -> None:
    client = api.client(new_key(f"slow-{uuid.uuid4().hex[:6]}", rpm=2))
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "within"}])
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "over"}])
    assert refused.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "Retry-After" in refused.value.response.headers


def test_the_openapi_page_and_unknown_paths_answer_in_openai_shape(api: ApiServer) -> None:
    status, body = api.get("/openapi.json")
    page = json.loads(body)
    assert status == 200 and {"/v1/chat/completions", "/v1/files", "/v1/batches"} <= set(page["paths"])
    chat = page["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"]["$ref"].rsplit("/", 1)[-1] in page["components"]["schemas"]
    assert "messages" in page["components"]["schemas"]["ChatRequest"]["properties"]
    status, body = api.get("/docs")
    assert status == 200
    status, body = api.get("/v1/nothing-here")
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_the_api_refuses_to_listen_beyond_loopback_without_tls() -> None:
    refused = ultra_cli("api", "--host", "0.0.0.0", "--port", "8999")
    assert refused.returncode == 2
    assert "API_TLS_CERTFILE" in refused.stderr and "Traceback" not in refused.stderr


def test_a_repeated_idempotency_key_answers_the_first_job_and_makes_no_other(
    api: ApiServer, key: str
) -> None:
    client = api.client(key)
    headers = {"Idempotency-Key": f"once-{uuid.uuid4().hex}"}
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "only once"}], extra_headers=headers
    )
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "only once"}], extra_headers=headers
    )
    assert again.id == first.id and again.choices[0].message.content == "echo: only once"
    # the key is the tenant's own: another tenant's same key makes its own job
    other = api.client(new_key(f"other-{uuid.uuid4().hex[:6]}")).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "only once"}], extra_headers=headers
    )
    assert other.id != first.id


def _jobs_with_prompt(prompt: str) -> list[Any]:
    return [r for r in records.list_jobs(limit=300) if r.request["messages"][-1]["content"] == prompt]


@pytest.mark.usefixtures("fresh_latencies")
def test_an_sdk_with_its_default_retries_makes_one_job_of_a_request_that_outlasts_the_wait(
    api: ApiServer, key: str, fake_provider: Any
) -> None:
    fake_provider.add_fault("latency", model="gpt-4o", ms=7000)
    # the SDK as users build it: two retries of a 5xx by default
    client = openai.OpenAI(api_key=key, base_url=api.url + "/v1", timeout=60)
    prompt = f"no second job {uuid.uuid4().hex}"
    with pytest.raises(openai.APIStatusError) as late:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    assert late.value.status_code == 504
    # the SDK did not send it again: one job, and the provider sees the prompt once
    assert [j.id for j in _jobs_with_prompt(prompt)] == [late.value.response.headers["X-Job-Id"]]
    assert late.value.response.headers["x-should-retry"] == "false"
    time.sleep(3)
    assert fake_provider.stats()["by_prompt"].get(prompt_key(prompt), 0) == 1


@pytest.mark.usefixtures("fresh_latencies")
def test_an_sdk_retry_with_an_idempotency_key_waits_on_the_same_job_again(
    api: ApiServer, key: str, fake_provider: Any
) -> None:
    fake_provider.add_fault("latency", model="gpt-4o", ms=7000)
    client = openai.OpenAI(api_key=key, base_url=api.url + "/v1", timeout=60)
    prompt = f"rejoined {uuid.uuid4().hex}"
    # the first wait (5 s) ends before the job: the SDK retries, and the retry answers the same job
    answer = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": prompt}],
        extra_headers={"Idempotency-Key": f"k-{uuid.uuid4().hex}"},
    )
    assert answer.choices[0].message.content == f"echo: {prompt}"
    assert [j.id for j in _jobs_with_prompt(prompt)] == [answer.id]
