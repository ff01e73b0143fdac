"""What a kind of provider is (``KindSpec``) and what one deployment of it is (``Deployment``).

A kind is declared once, in one module of this package (or a plugin's module that calls
``register_kind``): how to build its official SDK client, which errors it maps, which request parameters it
accepts, the context windows and equivalent tiers of its models, the cheap model to probe it with, and,
for the kinds that had environment variables before deployments files existed, the deployment those
variables describe. Everything else (routes, chains, health checks, SDK preload, the stack, status)
iterates over the registered specs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from ultra_tasks.config import Settings
    from ultra_tasks.providers.base import Provider

#: placeholder key for servers that need none (the local fake provider, many local servers); not a secret
PLACEHOLDER_API_KEY = "fake-provider-key"


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens, for cost accounting."""

    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True)
class Deployment:
    """One place a model is served: a kind, its models (names or globs), where and with which key.

    ``missing`` names what to set when the deployment is not configured (then nothing is ever sent to it);
    ``api_key`` is resolved from its ``env:`` reference and never shown (``repr`` leaves it out)."""

    name: str
    kind: str
    models: tuple[str, ...]
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    weight: float = 1.0
    rpm: float | None = None
    tpm: float | None = None
    max_concurrency: int | None = None
    timeout_s: float | None = None
    price: Price | None = None
    #: kind-specific options (validated by the kind's ``options`` model), e.g. Azure's api_version
    options: dict[str, Any] = field(default_factory=dict)
    is_fake: bool = False
    missing: str | None = None
    #: "file" (PROVIDERS_FILE) or "environment" (one deployment per provider from the variables)
    source: str = "environment"

    @property
    def configured(self) -> bool:
        return self.missing is None

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def limits(self) -> dict[str, float]:
        """Its fleet-wide rate limits, as PROVIDER_RATE_LIMITS spells them ({} when unlimited)."""
        return {k: v for k, v in (("rpm", self.rpm), ("tpm", self.tpm)) if v}


@dataclass(frozen=True)
class KindSpec:
    """One kind of provider. ``build(deployment, threads)`` returns the deployment's ``Provider`` (its SDK
    client shared out among ``threads`` threads); it is only called for configured deployments.

    Error mapping is the built ``Provider``'s: it raises only ``ProviderError``s (the SDK adapters,
    openai_provider.py and anthropic_provider.py, map their SDK's exceptions with ``map_sdk_error``), so a
    kind reusing an adapter inherits its mapping and a kind with its own client maps its own errors."""

    name: str
    #: one line for `ultra providers list` and the docs
    description: str
    build: Callable[[Deployment, int], Provider]
    #: modules a worker imports at start, so no job pays for an SDK's import (1 to 2.5 s of CPU)
    sdk_modules: tuple[str, ...] = ()
    #: whether a deployment needs an API key (openai_compatible servers often do not)
    needs_api_key: bool = True
    #: whether a deployment needs a base_url (the kind has no default server)
    needs_base_url: bool = False
    #: whether USE_FAKE_PROVIDER serves the kind's environment deployment when it has no key
    fakeable: bool = False
    #: the base_url of a deployment that sets none (None: the SDK's own default)
    default_base_url: Callable[[Settings], str | None] | None = None
    #: kind-specific options of a deployment (pydantic model, extra keys forbidden), or None: no options
    options: type[BaseModel] | None = None
    #: request parameters the kind passes through beside messages, max_tokens and temperature
    params: tuple[str, ...] = ()
    #: models a deployment of this kind serves when the environment defines it (no deployments file)
    models: tuple[str, ...] = ()
    #: context windows in tokens (glob, tokens), first match wins
    context_windows: tuple[tuple[str, int], ...] = ()
    #: equivalent tiers: (glob on a requested model of another kind, this kind's model of the same tier)
    tiers: tuple[tuple[str, str], ...] = ()
    #: the cheapest model to probe a deployment with when it names no model literally
    probe_model: str = "gpt-4o-mini"
    #: the deployment the environment variables describe when there is no deployments file, or None
    from_environment: Callable[[Settings], Deployment | None] | None = None

    def equivalent(self, model: str) -> str | None:
        """This kind's model of the same tier as ``model``, or None."""
        for pattern, target in self.tiers:
            if fnmatch.fnmatchcase(model, pattern):
                return target
        return None

    def probe_model_for(self, deployment: Deployment) -> str:
        """The model a health probe asks for: the deployment's first literal model, else the kind's."""
        for model in deployment.models:
            if not any(c in model for c in "*?["):
                return model
        return self.probe_model
