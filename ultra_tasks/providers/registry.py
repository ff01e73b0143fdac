"""Which provider serves which model, and the provider clients of this process.

Routes are glob patterns checked in order: MODEL_MAP entries first (so operators can override), then the
built-in ones. A provider with an API key (and optionally a base URL) talks to the real API. One without
talks to the local fake provider (FAKE_PROVIDER_URL) only when that was chosen explicitly
(USE_FAKE_PROVIDER; `ultra up` and the tests choose it when no key is set); otherwise it is "not
configured": nothing is sent, its calls raise ``ProviderNotConfiguredError`` naming the variable to set,
and fallback chains skip it. A missing key never turns production traffic into the fake's echoes.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import ConfigurationError, ProviderNotConfiguredError, UnknownModelError
from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider

OPENAI = "openai"
ANTHROPIC = "anthropic"
OPENAI_COMPAT = "openai_compat"
PROVIDER_NAMES = (OPENAI, ANTHROPIC, OPENAI_COMPAT)

#: built-in routes: (glob, provider)
DEFAULT_ROUTES: tuple[tuple[str, str], ...] = (
    ("gpt-*", OPENAI),
    ("chatgpt-*", OPENAI),
    ("o1*", OPENAI),
    ("o3*", OPENAI),
    ("o4*", OPENAI),
    ("claude-*", ANTHROPIC),
)

#: placeholder key for the local fake provider; not a secret
FAKE_API_KEY = "fake-provider-key"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    api_key: str | None
    base_url: str | None
    is_fake: bool
    #: the variable to set when the provider is not configured (None: it is)
    missing: str | None = None

    @property
    def configured(self) -> bool:
        return self.missing is None


def routes(settings: Settings | None = None) -> list[tuple[str, str]]:
    settings = settings or get_settings()
    return [*settings.model_map.items(), *DEFAULT_ROUTES]


def provider_for_model(model: str, settings: Settings | None = None) -> str:
    """The provider that serves ``model``; UnknownModelError when none does."""
    settings = settings or get_settings()
    table = routes(settings)
    for pattern, provider in table:
        if fnmatch.fnmatchcase(model, pattern):
            if provider not in PROVIDER_NAMES:
                raise ConfigurationError(
                    f"MODEL_MAP routes {pattern!r} to unknown provider {provider!r} "
                    f"(expected one of {', '.join(PROVIDER_NAMES)})"
                )
            if provider == OPENAI_COMPAT and not settings.openai_compat_base_url:
                raise ConfigurationError(
                    f"MODEL_MAP routes {pattern!r} to openai_compat but OPENAI_COMPAT_BASE_URL is not set"
                )
            return provider
    raise UnknownModelError(model, [p for p, _ in table])


def provider_config(name: str, settings: Settings | None = None) -> ProviderConfig:
    """Where ``name`` sends its calls: the real API (its key set), the local fake provider (no key and
    USE_FAKE_PROVIDER chosen), or nowhere (``missing`` names the variable to set)."""
    settings = settings or get_settings()
    fake = settings.fake_provider_url.rstrip("/")
    if name == OPENAI:
        if settings.openai_api_key:
            return ProviderConfig(name, settings.openai_api_key, settings.openai_base_url, False)
        if settings.use_fake_provider:
            return ProviderConfig(name, FAKE_API_KEY, settings.openai_base_url or f"{fake}/v1", True)
        return ProviderConfig(name, None, None, False, missing="OPENAI_API_KEY")
    if name == ANTHROPIC:
        if settings.anthropic_api_key:
            return ProviderConfig(name, settings.anthropic_api_key, settings.anthropic_base_url, False)
        if settings.use_fake_provider:
            return ProviderConfig(name, FAKE_API_KEY, settings.anthropic_base_url or fake, True)
        return ProviderConfig(name, None, None, False, missing="ANTHROPIC_API_KEY")
    if name == OPENAI_COMPAT:
        # configured by its base URL alone (a local server often needs no key), and never faked: it is
        # only ever used when routed to on purpose (MODEL_MAP, chains)
        if settings.openai_compat_base_url:
            key = settings.openai_compat_api_key or FAKE_API_KEY
            return ProviderConfig(name, key, settings.openai_compat_base_url, False)
        return ProviderConfig(name, None, None, False, missing="OPENAI_COMPAT_BASE_URL")
    raise ConfigurationError(f"unknown provider {name!r}")


def describe(name: str, settings: Settings | None = None) -> str:
    """Where ``name``'s calls go, in a few words (``ultra config``); never shows a key."""
    config = provider_config(name, settings)
    if not config.configured:
        fake = "" if name == OPENAI_COMPAT else "; USE_FAKE_PROVIDER is off"
        return f"not configured ({config.missing} is not set{fake})"
    if config.is_fake:
        return f"the local fake provider at {config.base_url} (USE_FAKE_PROVIDER)"
    return f"{config.base_url or 'its official API'}"


class UnconfiguredProvider(Provider):
    """A provider with neither credentials nor the fake chosen: every call fails at once, sending nothing."""

    def __init__(self, name: str, variable: str) -> None:
        self.name = name
        self.variable = variable

    def error(self, model: str | None = None) -> ProviderNotConfiguredError:
        return ProviderNotConfiguredError(
            self.name, self.variable, model=model, fake_allowed=self.name != OPENAI_COMPAT
        )

    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        raise self.error(request.model)


def _build(config: ProviderConfig, pool: int) -> Provider:
    if config.missing is not None or config.api_key is None:
        return UnconfiguredProvider(config.name, config.missing or f"{config.name.upper()}_API_KEY")
    if config.name == ANTHROPIC:
        from ultra_tasks.providers.anthropic_provider import AnthropicProvider

        return AnthropicProvider(config.name, api_key=config.api_key, base_url=config.base_url, threads=pool)
    from ultra_tasks.providers.openai_provider import OpenAIProvider

    return OpenAIProvider(config.name, api_key=config.api_key, base_url=config.base_url, threads=pool)


class ProviderRegistry:
    """Provider clients of this process, built on first use and shared by all threads."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        #: threads that share each provider client (a worker sets it to its concurrency at start)
        self.pool_size = self.settings.queue_worker_count

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def get(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            with self._lock:
                provider = self._providers.get(name)
                if provider is None:
                    provider = self._providers[name] = _build(
                        provider_config(name, self.settings), self.pool_size
                    )
        return provider

    def for_model(self, model: str) -> Provider:
        return self.get(provider_for_model(model, self.settings))

    def close(self) -> None:
        with self._lock:
            for provider in self._providers.values():
                provider.close()
            self._providers.clear()


_default: ProviderRegistry | None = None


def default_registry() -> ProviderRegistry:
    global _default
    if _default is None:
        _default = ProviderRegistry()
    return _default
