"""Model routes and provider configuration."""

from __future__ import annotations

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.errors import (
    ConfigurationError,
    ErrorKind,
    ProviderNotConfiguredError,
    UnknownModelError,
)
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry, provider_config, provider_for_model


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("o3-mini", "openai"),
        ("claude-3-5-haiku-latest", "anthropic"),
    ],
)
def test_builtin_routes(model: str, provider: str) -> None:
    assert provider_for_model(model, load_settings()) == provider


def test_model_map_adds_routes_and_overrides_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_MAP", '{"llama-*": "openai_compat", "gpt-4o": "anthropic"}')
    monkeypatch.setenv("OPENAI_COMPAT_BASE_URL", "http://127.0.0.1:9/v1")
    settings = load_settings()
    assert provider_for_model("llama-3-70b", settings) == "openai_compat"
    assert provider_for_model("gpt-4o", settings) == "anthropic"


def test_unknown_model_is_a_validation_error_on_the_model_field() -> None:
    with pytest.raises(UnknownModelError) as info:
        provider_for_model("mistral-large", load_settings())
    assert info.value.field == "model"


def test_route_to_an_unknown_provider_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_MAP", '{"x-*": "nobody"}')
    with pytest.raises(ConfigurationError, match="unknown provider 'nobody'"):
        provider_for_model("x-1", load_settings())


def test_provider_without_key_uses_the_local_fake_provider_only_when_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("FAKE_PROVIDER_URL", "http://127.0.0.1:8787")
    monkeypatch.setenv("USE_FAKE_PROVIDER", "1")
    config = provider_config("openai", load_settings())
    assert config.configured and config.is_fake and config.base_url == "http://127.0.0.1:8787/v1"


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("openai", "OPENAI_API_KEY"),
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("openai_compat", "OPENAI_COMPAT_BASE_URL"),
    ],
)
def test_provider_without_key_and_without_the_fake_chosen_is_not_configured_and_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, provider: str, variable: str
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_COMPAT_BASE_URL", "USE_FAKE_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    config = provider_config(provider, settings)
    assert not config.configured and not config.is_fake and config.missing == variable
    assert config.api_key is None and config.base_url is None
    client = ProviderRegistry(settings).get(provider)
    request = LLMRequest("some-model", (ChatMessage("user", "hi"),), 8)
    with pytest.raises(ProviderNotConfiguredError, match=variable) as info:
        client.complete(request, timeout=1)
    assert info.value.kind is ErrorKind.PERMANENT and info.value.to_dict()["missing"] == variable


def test_openai_compat_is_never_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_COMPAT_BASE_URL", raising=False)
    monkeypatch.setenv("USE_FAKE_PROVIDER", "1")
    assert provider_config("openai_compat", load_settings()).missing == "OPENAI_COMPAT_BASE_URL"


def test_provider_with_key_uses_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    config = provider_config("anthropic", load_settings())
    assert not config.is_fake and config.base_url is None and config.api_key == "sk-ant-x"
