"""SDK errors from real HTTP responses are mapped into our tree and classified for retry and fallback."""

from __future__ import annotations

from typing import Any

import pytest

from ultra_tasks.config import get_settings
from ultra_tasks.errors import (
    ErrorKind,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderTimeoutError,
    QuotaExhaustedError,
    RateLimitedError,
    ServiceUnavailableException,
)
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry

pytestmark = pytest.mark.timeout(30)

CASES = [
    ({"kind": "status", "status": 500}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    ({"kind": "status", "status": 502}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    ({"kind": "status", "status": 503}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    ({"kind": "status", "status": 529}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    ({"kind": "status", "status": 429, "retry_after": 7}, RateLimitedError, ErrorKind.RATE_LIMITED),
    ({"kind": "quota"}, QuotaExhaustedError, ErrorKind.QUOTA_EXHAUSTED),
    ({"kind": "status", "status": 400}, ProviderBadRequestError, ErrorKind.PERMANENT),
    ({"kind": "status", "status": 401}, ProviderAuthError, ErrorKind.PERMANENT),
    ({"kind": "status", "status": 403}, ProviderAuthError, ErrorKind.PERMANENT),
    ({"kind": "status", "status": 404}, ProviderBadRequestError, ErrorKind.PERMANENT),
    ({"kind": "status", "status": 422}, ProviderBadRequestError, ErrorKind.PERMANENT),
    ({"kind": "drop"}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    # a 200 the client cannot use (a proxy's error page, JSON without the answer) is the server's fault
    ({"kind": "malformed"}, ServiceUnavailableException, ErrorKind.TRANSIENT),
    ({"kind": "malformed", "json": True}, ServiceUnavailableException, ErrorKind.TRANSIENT),
]
MODELS = {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet-latest"}


def _request(model: str) -> LLMRequest:
    return LLMRequest(model=model, messages=(ChatMessage("user", "hello"),), max_tokens=16)


@pytest.fixture
def registry() -> Any:
    reg = ProviderRegistry(get_settings())
    yield reg
    reg.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("fault", "error_class", "kind"), CASES, ids=lambda v: str(v) if isinstance(v, dict) else None
)
def test_sdk_error_is_mapped_and_classified(
    provider: str,
    fault: dict[str, Any],
    error_class: type[ProviderError],
    kind: ErrorKind,
    registry: Any,
    fake_provider: Any,
) -> None:
    fault = dict(fault)
    fake_provider.add_fault(fault.pop("kind"), **fault)
    with pytest.raises(error_class) as info:
        registry.get(provider).complete(_request(MODELS[provider]), timeout=5)
    assert info.value.kind is kind
    assert info.value.provider == provider
    assert info.value.model == MODELS[provider]
    if fault.get("retry_after"):
        assert info.value.retry_after == pytest.approx(7)
    record = info.value.to_dict()
    assert record["kind"] == kind.value and record["type"] == error_class.__name__


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_hung_provider_raises_timeout_within_the_given_bound(
    provider: str, registry: Any, fake_provider: Any
) -> None:
    fake_provider.add_fault("hang")
    with pytest.raises(ProviderTimeoutError) as info:
        registry.get(provider).complete(_request(MODELS[provider]), timeout=0.5)
    assert info.value.kind is ErrorKind.TRANSIENT


def test_system_prompt_and_sampling_parameters_reach_anthropic(registry: Any, fake_provider: Any) -> None:
    request = LLMRequest(
        model="claude-3-5-haiku-latest",
        messages=(ChatMessage("system", "be terse and exact"), ChatMessage("user", "hello there")),
        max_tokens=16,
        temperature=0.2,
        params={"top_p": 0.9, "stop": "END"},
    )
    response = registry.get("anthropic").complete(request, timeout=5)
    assert response.text == "echo: hello there"
    # the fake counts system words as input: 4 system + 2 user
    assert response.usage.input_tokens == 6
    assert response.finish_reason == "end_turn"
