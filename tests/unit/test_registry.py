"""Model routes and provider configuration."""

from __future__ import annotations

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.errors import ConfigurationError, UnknownModelError
from ultra_tasks.providers.registry import provider_config, provider_for_model


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


def test_provider_without_key_uses_the_local_fake_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("FAKE_PROVIDER_URL", "http://127.0.0.1:8787")
    config = provider_config("openai", load_settings())
    assert config.is_fake and config.base_url == "http://127.0.0.1:8787/v1"


def test_provider_with_key_uses_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    config = provider_config("anthropic", load_settings())
    assert not config.is_fake and config.base_url is None and config.api_key == "sk-ant-x"
