"""Which provider serves which model, and the provider clients of this process.

Routes are glob patterns checked in order: MODEL_MAP entries first (so operators can override), then the
built-in ones. A provider with no API key talks to the local fake provider (FAKE_PROVIDER_URL), which makes
the whole system runnable offline; setting its key (and optionally base URL) switches it to the real API.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import ConfigurationError, UnknownModelError
from ultra_tasks.providers.base import Provider

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
    api_key: str
    base_url: str | None
    is_fake: bool


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
    settings = settings or get_settings()
    fake = settings.fake_provider_url.rstrip("/")
    if name == OPENAI:
        if settings.openai_api_key:
            return ProviderConfig(name, settings.openai_api_key, settings.openai_base_url, False)
        return ProviderConfig(name, FAKE_API_KEY, settings.openai_base_url or f"{fake}/v1", True)
    if name == ANTHROPIC:
        if settings.anthropic_api_key:
            return ProviderConfig(name, settings.anthropic_api_key, settings.anthropic_base_url, False)
        return ProviderConfig(name, FAKE_API_KEY, settings.anthropic_base_url or fake, True)
    if name == OPENAI_COMPAT:
        return ProviderConfig(
            name, settings.openai_compat_api_key or FAKE_API_KEY, settings.openai_compat_base_url, False
        )
    raise ConfigurationError(f"unknown provider {name!r}")


def _build(config: ProviderConfig, pool: int) -> Provider:
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
