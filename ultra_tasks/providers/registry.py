"""Which deployment serves which model, and the provider clients of this process.

The deployments come from the deployments file (PROVIDERS_FILE) or, without one, from the environment
variables, one per provider (providers/deployments.py); each is built by its kind (providers/kinds/). A
deployment from the environment without an API key talks to the local fake provider (FAKE_PROVIDER_URL)
only when that was chosen explicitly (USE_FAKE_PROVIDER; `ultra up` and the tests choose it when no key is
set); otherwise it is "not configured": nothing is sent, its calls raise ``ProviderNotConfiguredError``
naming the variable to set, and fallback chains skip it. A missing key never turns production traffic into
the fake's echoes.
"""

from __future__ import annotations

import threading

from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import ConfigurationError, ProviderNotConfiguredError
from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider
from ultra_tasks.providers.deployments import Catalog, catalog
from ultra_tasks.providers.kinds import get_kind
from ultra_tasks.providers.kinds.base import PLACEHOLDER_API_KEY, Deployment
from ultra_tasks.providers.router import DeploymentRouter
from ultra_tasks.redaction import redact_url

# The deployments the environment defines when there is no deployments file (their names are the
# providers' names of MODEL_MAP, FALLBACK_CHAINS, PROVIDER_RATE_LIMITS, breakers and metrics).
OPENAI = "openai"
ANTHROPIC = "anthropic"
OPENAI_COMPAT = "openai_compat"
PROVIDER_NAMES = (OPENAI, ANTHROPIC, OPENAI_COMPAT)

#: placeholder key for the local fake provider; not a secret
FAKE_API_KEY = PLACEHOLDER_API_KEY

#: what a deployment's settings were called before deployments existed
ProviderConfig = Deployment


def routes(settings: Settings | None = None) -> list[str]:
    """The model names and globs some deployment serves."""
    return catalog(settings).known_patterns()


def provider_for_model(model: str, settings: Settings | None = None) -> str:
    """The (first) deployment that serves ``model``; UnknownModelError when none does."""
    deployment = catalog(settings).require(model)[0]
    if not deployment.configured and deployment.name == OPENAI_COMPAT:
        raise ConfigurationError(
            f"MODEL_MAP routes {model!r} to openai_compat but OPENAI_COMPAT_BASE_URL is not set"
        )
    return deployment.name


def provider_config(name: str, settings: Settings | None = None) -> Deployment:
    """The deployment named ``name``: where its calls go (``missing`` names what to set when nowhere)."""
    found = catalog(settings).by_name.get(name)
    if found is None:
        raise ConfigurationError(f"unknown provider {name!r}")
    return found


def describe(name: str, settings: Settings | None = None) -> str:
    """Where ``name``'s calls go, in a few words (``ultra config``); never shows a key, nor the password
    of a base URL (a proxy's ``user:password@``)."""
    config = provider_config(name, settings)
    if not config.configured:
        fake = "; USE_FAKE_PROVIDER is off" if get_kind(config.kind).fakeable else ""
        return f"not configured ({config.missing} is not set{fake})"
    if config.is_fake:
        chosen = "the deployments file" if config.source == "file" else "USE_FAKE_PROVIDER"
        return f"the local fake provider at {redact_url(config.base_url or '')} ({chosen})"
    return redact_url(config.base_url) if config.base_url else "its official API"


class UnconfiguredProvider(Provider):
    """A deployment with neither credentials nor the fake chosen: every call fails at once, sending
    nothing."""

    def __init__(self, name: str, variable: str, *, fake_allowed: bool = True) -> None:
        self.name = name
        self.variable = variable
        self.fake_allowed = fake_allowed

    def error(self, model: str | None = None) -> ProviderNotConfiguredError:
        return ProviderNotConfiguredError(
            self.name, self.variable, model=model, fake_allowed=self.fake_allowed
        )

    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        raise self.error(request.model)


def build_provider(deployment: Deployment, pool: int) -> Provider:
    """The deployment's client, built by its kind (or an ``UnconfiguredProvider``)."""
    spec = get_kind(deployment.kind)
    if deployment.missing is not None:
        return UnconfiguredProvider(deployment.name, deployment.missing, fake_allowed=spec.fakeable)
    return spec.build(deployment, pool)


class ProviderRegistry:
    """The deployments' clients of this process, built on first use and shared by all threads, and the
    router that orders a model's deployments for each call."""

    def __init__(self, settings: Settings | None = None, *, deployments: Catalog | None = None) -> None:
        self._settings = settings
        self._catalog = deployments
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        self.router = DeploymentRouter()
        #: threads that share each provider client (a worker sets it to its concurrency at start)
        self.pool_size = self.settings.queue_worker_count

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @property
    def catalog(self) -> Catalog:
        return self._catalog or catalog(self.settings)

    def deployment(self, name: str) -> Deployment:
        return provider_config(name, self.settings) if self._catalog is None else self._catalog.by_name[name]

    def get(self, name: str) -> Provider:
        """The client of the deployment named ``name``."""
        provider = self._providers.get(name)
        if provider is None:
            with self._lock:
                provider = self._providers.get(name)
                if provider is None:
                    deployment = self.catalog.by_name.get(name)
                    if deployment is None:
                        raise ConfigurationError(f"unknown provider {name!r}")
                    provider = self._providers[name] = build_provider(deployment, self.pool_size)
        return provider

    def for_model(self, model: str) -> Provider:
        return self.get(self.catalog.require(model)[0].name)

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
