"""Anthropic's API through the official ``anthropic`` SDK (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``
without a deployments file)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultra_tasks.providers.kinds.base import PLACEHOLDER_API_KEY, Deployment, KindSpec

if TYPE_CHECKING:
    from ultra_tasks.config import Settings
    from ultra_tasks.providers.base import Provider

NAME = "anthropic"


def build(deployment: Deployment, threads: int) -> Provider:
    from ultra_tasks.providers.anthropic_provider import AnthropicProvider

    assert deployment.api_key is not None
    return AnthropicProvider(
        deployment.name,
        api_key=deployment.api_key,
        base_url=deployment.base_url,
        threads=threads,
        params=SPEC.params,
    )


def from_environment(settings: Settings) -> Deployment:
    """The ``anthropic`` deployment: its key, the local fake provider (USE_FAKE_PROVIDER), or not
    configured."""
    models = SPEC.models
    if settings.anthropic_api_key:
        return Deployment(NAME, NAME, models, settings.anthropic_base_url, settings.anthropic_api_key)
    if settings.use_fake_provider:
        base = settings.anthropic_base_url or settings.fake_provider_url.rstrip("/")
        return Deployment(NAME, NAME, models, base, PLACEHOLDER_API_KEY, is_fake=True)
    return Deployment(NAME, NAME, models, missing="ANTHROPIC_API_KEY")


SPEC = KindSpec(
    name=NAME,
    description="Anthropic's API (the anthropic SDK)",
    build=build,
    sdk_modules=("ultra_tasks.providers.anthropic_provider",),
    params=("top_p", "top_k"),
    models=("claude-*",),
    context_windows=(("claude-*", 200_000),),
    tiers=(
        ("gpt-4o-mini*", "claude-3-5-haiku-latest"),
        ("gpt-4.1-mini*", "claude-3-5-haiku-latest"),
        ("gpt-4.1-nano*", "claude-3-5-haiku-latest"),
        ("gpt-3.5*", "claude-3-5-haiku-latest"),
        ("o*-mini*", "claude-3-5-haiku-latest"),
        ("gpt-4*", "claude-3-5-sonnet-latest"),
        ("o1*", "claude-3-opus-latest"),
        ("o3*", "claude-3-opus-latest"),
    ),
    probe_model="claude-3-5-haiku-latest",
    fakeable=True,
    from_environment=from_environment,
)
