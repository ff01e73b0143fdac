"""The fake LLM provider, driven over real HTTP through the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from ultra_tasks.providers.fake_server import FakeProviderControl, FakeProviderServer

pytestmark = pytest.mark.timeout(30)

USER = [{"role": "user", "content": "hello there world"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as srv:
        yield srv


@pytest.fixture
def control(server: FakeProviderServer) -> FakeProviderControl:
    ctl = FakeProviderControl(server.url)
    ctl.reset()  # every test starts with no faults and zero counters
    return ctl


@pytest.fixture(scope="module")
def oai(server: FakeProviderServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="k", base_url=server.url + "/v1", max_retries=0, timeout=10)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(server: FakeProviderServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(api_key="k", base_url=server.url, max_retries=0, timeout=10)
    yield client
    client.close()


def ask_openai(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any) -> Any:
    kw.setdefault("messages", USER)
    return client.chat.completions.create(model=model, **kw)


def ask_claude(client: anthropic.Anthropic, model: str = "claude-sonnet", **kw: Any) -> Any:
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 100)
    return client.messages.create(model=model, **kw)


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST without an SDK (to send what the SDKs refuse to send); returns (status, JSON body)."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# -- normal answers -------------------------------------------------------------


def test_openai_sdk_gets_deterministic_echo_with_word_usage(control: Any, oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, *USER]
    first = ask_openai(oai, messages=messages)
    second = ask_openai(oai, messages=messages)
    assert first.object == "chat.completion"
    assert first.model == "gpt-4o"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == "echo: hello there world"
    assert first.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert first.id != second.id
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (5, 4, 9)


def test_openai_reply_is_truncated_to_max_tokens_words(control: Any, oai: openai.OpenAI) -> None:
    resp = ask_openai(oai, max_tokens=2)
    assert resp.choices[0].message.content == "echo: hello"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 2


def test_anthropic_sdk_gets_echo_from_text_blocks_and_counts_system(
    control: Any, claude: anthropic.Anthropic
) -> None:
    blocks = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]
    msg = ask_claude(claude, system="you are terse", messages=[{"role": "user", "content": blocks}])
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model == "claude-sonnet"
    assert [(b.type, b.text) for b in msg.content] == [("text", "echo: first part second")]
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (6, 4)


def test_anthropic_reply_answers_last_user_turn_and_truncates(
    control: Any, claude: anthropic.Anthropic
) -> None:
    history = [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "one two three four"},
    ]
    msg = ask_claude(claude, messages=history, max_tokens=3)
    assert msg.content[0].text == "echo: one two"
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 3


def test_healthz_and_context_manager_lifecycle() -> None:
    with FakeProviderServer() as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert not srv.url.endswith(":0")
        ctl = FakeProviderControl(srv.url, timeout=2)
        assert ctl.healthy()
    assert not ctl.healthy()


# -- request validation -------------------------------------------------------


def test_requests_without_api_key_get_401_in_provider_format(
    server: FakeProviderServer, control: Any
) -> None:
    body = json.dumps({"model": "m", "max_tokens": 5, "messages": USER}).encode()
    status, data = raw_post(server.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert status == 401
    assert set(data["error"]) >= {"message", "type", "code"}
    status, data = raw_post(server.url + "/v1/messages", body, {"Content-Type": "application/json"})
    assert status == 401
    assert data["type"] == "error"
    assert data["error"]["type"] == "authentication_error"
    assert control.stats()["by_outcome"] == {"unauthenticated": 2}


def test_malformed_or_incomplete_requests_get_400(server: FakeProviderServer, control: Any) -> None:
    oa = {"Authorization": "Bearer k"}
    an = {"x-api-key": "k"}
    status, data = raw_post(server.url + "/v1/chat/completions", b"{not json", oa)
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"
    status, data = raw_post(server.url + "/v1/chat/completions", json.dumps({"messages": USER}).encode(), oa)
    assert status == 400
    assert "model" in data["error"]["message"]
    status, data = raw_post(server.url + "/v1/messages", json.dumps({"model": "c"}).encode(), an)
    assert status == 400
    assert data["error"]["type"] == "invalid_request_error"
    assert "messages" in data["error"]["message"]


def test_streaming_requests_are_rejected_with_400(
    control: Any, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.BadRequestError, match=r"[Ss]tream"):
        ask_openai(oai, stream=True)
    with pytest.raises(anthropic.BadRequestError, match=r"[Ss]tream"):
        ask_claude(claude, stream=True)


# -- status faults map to SDK exceptions -------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (502, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_status_fault_raises_matching_openai_exception(
    control: FakeProviderControl, oai: openai.OpenAI, status: int, exc_class: type[Exception]
) -> None:
    control.add_fault("status", status=status, message=f"injected {status}")
    with pytest.raises(exc_class) as info:
        ask_openai(oai)
    exc = info.value
    assert isinstance(exc, openai.APIStatusError)
    assert exc.status_code == status
    assert isinstance(exc.body, dict)
    assert exc.body["message"] == f"injected {status}"
    assert exc.type


def test_openai_rate_limit_exposes_retry_after_header(
    control: FakeProviderControl, oai: openai.OpenAI
) -> None:
    control.add_fault("status", status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        ask_openai(oai)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.type == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (422, anthropic.UnprocessableEntityError, "invalid_request_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.ServiceUnavailableError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_status_fault_raises_matching_anthropic_exception(
    control: FakeProviderControl,
    claude: anthropic.Anthropic,
    status: int,
    exc_class: type[Exception],
    error_type: str,
) -> None:
    control.add_fault("status", status=status, retry_after=3)
    with pytest.raises(exc_class) as info:
        ask_claude(claude)
    exc = info.value
    assert isinstance(exc, anthropic.APIStatusError)
    assert exc.status_code == status
    assert exc.type == error_type
    assert exc.body == {"type": "error", "error": {"type": error_type, "message": exc.api_message}}
    assert exc.response.headers["retry-after"] == "3"


def test_anthropic_529_overloaded_is_a_server_error(control: FakeProviderControl, claude: Any) -> None:
    control.add_fault("status", status=529)
    with pytest.raises(anthropic.InternalServerError) as info:
        ask_claude(claude)
    assert type(info.value) is anthropic.OverloadedError


def test_quota_fault_uses_each_providers_quota_error(
    control: FakeProviderControl, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control.add_fault("quota", reset_after=30)
    with pytest.raises(openai.RateLimitError) as oa_info:
        ask_openai(oai)
    assert oa_info.value.code == "insufficient_quota"
    assert oa_info.value.type == "insufficient_quota"
    assert isinstance(oa_info.value.body, dict)
    assert oa_info.value.body["message"] == (
        "You exceeded your current quota, please check your plan and billing details."
    )
    assert oa_info.value.response.headers["retry-after"] == "30"
    with pytest.raises(anthropic.BadRequestError) as an_info:
        ask_claude(claude)
    assert an_info.value.type == "invalid_request_error"
    assert an_info.value.api_message == "Your credit balance is too low to access the Anthropic API."
    assert control.stats()["by_outcome"] == {"quota": 2}


# -- latency, hang, drop ---------------------------------------------------------


def test_hang_fault_times_out_client_and_frees_the_request(
    control: FakeProviderControl, oai: openai.OpenAI
) -> None:
    control.add_fault("hang")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask_openai(oai, timeout=0.5)
    assert time.monotonic() - started < 5
    # The client hung up, so the server must stop counting the request as in flight.
    assert wait_for(lambda: control.stats()["in_flight"] == 0)
    assert control.stats()["by_outcome"] == {"hang": 1}


def test_hang_fault_answers_normally_after_max_s(control: FakeProviderControl, oai: openai.OpenAI) -> None:
    control.add_fault("hang", max_s=0.3)
    started = time.monotonic()
    resp = ask_openai(oai)
    assert time.monotonic() - started >= 0.3
    assert resp.choices[0].message.content == "echo: hello there world"


def test_drop_fault_raises_connection_error(
    control: FakeProviderControl, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control.add_fault("drop")
    with pytest.raises(openai.APIConnectionError) as oa_info:
        ask_openai(oai)
    assert not isinstance(oa_info.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError) as an_info:
        ask_claude(claude)
    assert not isinstance(an_info.value, anthropic.APITimeoutError)
    assert control.stats()["by_outcome"] == {"drop": 2}


def test_latency_fault_delays_then_next_fault_still_applies(
    control: FakeProviderControl, oai: openai.OpenAI
) -> None:
    control.add_fault("latency", ms=300, times=2)
    control.add_fault("status", status=503, times=1)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert ask_openai(oai).choices[0].message.content == "echo: hello there world"
    assert time.monotonic() - started >= 0.3


def test_sleep_marker_delays_only_that_request(
    control: FakeProviderControl, claude: anthropic.Anthropic
) -> None:
    started = time.monotonic()
    msg = ask_claude(claude, messages=[{"role": "user", "content": "slow [[sleep_ms=400]] please"}])
    assert time.monotonic() - started >= 0.4
    assert msg.content[0].text == "echo: slow [[sleep_ms=400]] please"
    assert control.stats()["by_outcome"] == {"ok": 1}


# -- targeting, times, control API, counters --------------------------------------------


def test_fault_on_one_model_does_not_affect_another(
    control: FakeProviderControl, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control.add_fault("status", model="gpt-4o", status=503)
    control.add_fault("status", api="anthropic", model="claude-opus", status=529)
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai, model="gpt-4o")
    assert ask_openai(oai, model="gpt-4o-mini").choices[0].message.content.startswith("echo:")
    with pytest.raises(anthropic.OverloadedError):
        ask_claude(claude, model="claude-opus")
    assert ask_claude(claude, model="claude-haiku").content[0].text.startswith("echo:")
    assert ask_openai(oai, model="claude-opus").choices[0].finish_reason == "stop"


def test_fault_with_times_applies_to_next_n_requests_only(
    control: FakeProviderControl, oai: openai.OpenAI
) -> None:
    fault_id = control.add_fault("status", status=500, times=2)
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    assert [(f["id"], f["times"]) for f in control.faults()] == [(fault_id, 1)]
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    assert control.faults() == []
    assert ask_openai(oai).choices[0].finish_reason == "stop"


def test_control_api_lists_removes_and_validates_faults(control: FakeProviderControl, oai: Any) -> None:
    first = control.add_fault("status", status=503)
    second = control.add_fault("latency", api="openai", ms=10)
    listed = control.faults()
    assert [f["id"] for f in listed] == [first, second]
    assert listed[0] == {
        "id": first,
        "kind": "status",
        "model": "*",
        "api": "*",
        "times": None,
        "hits": 0,
        "status": 503,
    }
    control.remove_fault(first)
    assert [f["id"] for f in control.faults()] == [second]
    with pytest.raises(ValueError, match="404"):
        control.remove_fault(first)
    with pytest.raises(ValueError, match="kind"):
        control.add_fault("explode")
    with pytest.raises(ValueError, match="status"):
        control.add_fault("status")
    with pytest.raises(ValueError, match="api"):
        control.add_fault("drop", api="gemini")
    control.clear_faults()
    assert control.faults() == []
    assert ask_openai(oai).choices[0].finish_reason == "stop"


def test_stats_count_requests_by_api_model_and_outcome(
    control: FakeProviderControl, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    control.add_fault("status", model="gpt-4o", status=503, times=1)
    ask_openai(oai, model="gpt-4o-mini")
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai, model="gpt-4o")
    ask_claude(claude)
    ask_claude(claude)
    stats = control.stats()
    arrivals = stats.pop("arrivals")
    by_prompt = stats.pop("by_prompt")
    assert sum(by_prompt.values()) == 4
    # three of the four were answered: the per-prompt count of completed calls says so
    assert sum(stats.pop("ok_by_prompt").values()) == 3
    assert len(arrivals) == 4 and arrivals == sorted(arrivals)
    assert abs(arrivals[-1] - time.time()) < 5
    assert stats == {
        "total": 4,
        "by_api": {"openai": 2, "anthropic": 2},
        "by_model": {"gpt-4o-mini": 1, "gpt-4o": 1, "claude-sonnet": 2},
        "by_outcome": {"ok": 3, "status_503": 1},
        "in_flight": 0,
        "max_in_flight": 1,
    }


def test_reset_clears_faults_and_counters(control: FakeProviderControl, oai: openai.OpenAI) -> None:
    control.add_fault("status", status=503)
    with pytest.raises(openai.InternalServerError):
        ask_openai(oai)
    control.reset()
    assert control.faults() == []
    assert control.stats()["total"] == 0
    assert ask_openai(oai).choices[0].finish_reason == "stop"
    assert control.stats()["by_outcome"] == {"ok": 1}


# -- load and shutdown --------------------------------------------------------------


async def _burst(url: str, count: int) -> list[tuple[int, str]]:
    """Send ``count`` requests at once (half per API) and return (status, reply text)."""

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, str]:
        body = {"model": f"m{i % 3}", "max_tokens": 50, "messages": [{"role": "user", "content": f"n {i}"}]}
        if i % 2:
            async with session.post(url + "/v1/messages", json=body, headers={"x-api-key": "k"}) as resp:
                data = await resp.json()
                return resp.status, data["content"][0]["text"]
        async with session.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
        ) as resp:
            data = await resp.json()
            return resp.status, data["choices"][0]["message"]["content"]

    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: all requests really in parallel
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.wait_for(asyncio.gather(*(one(session, i) for i in range(count))), timeout=20)


def test_three_hundred_concurrent_requests_are_all_answered(
    server: FakeProviderServer, control: FakeProviderControl
) -> None:
    control.add_fault("latency", ms=300)
    results = asyncio.run(_burst(server.url, 300))
    assert results == [(200, f"echo: n {i}") for i in range(300)]
    stats = control.stats()
    assert stats["total"] == 300
    assert stats["by_outcome"] == {"ok": 300}
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] > 50


def test_stop_returns_promptly_with_hung_request_in_flight() -> None:
    srv = FakeProviderServer().start()
    ctl = FakeProviderControl(srv.url)
    ctl.add_fault("hang")
    errors: list[BaseException] = []

    def call() -> None:
        client = openai.OpenAI(api_key="k", base_url=srv.url + "/v1", max_retries=0, timeout=20)
        try:
            ask_openai(client)
        except openai.APIConnectionError as exc:
            errors.append(exc)
        finally:
            client.close()

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert wait_for(lambda: ctl.stats()["in_flight"] == 1)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 3
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(errors) == 1
    assert not ctl.healthy()
