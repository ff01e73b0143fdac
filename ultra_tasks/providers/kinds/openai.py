"""OpenAI's API through the official ``openai`` SDK (``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` without a
deployments file)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultra_tasks.providers.kinds.base import PLACEHOLDER_API_KEY, Deployment, KindSpec

if TYPE_CHECKING:
    from ultra_tasks.config import Settings
    from ultra_tasks.providers.base import Provider

NAME = "openai"
PARAMS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def build(deployment: Deployment, threads: int) -> Provider:
    from ultra_tasks.providers.openai_provider import OpenAIProvider

    assert deployment.api_key is not None
    return OpenAIProvider(
        deployment.name,
        api_key=deployment.api_key,
        base_url=deployment.base_url,
        threads=threads,
        params=PARAMS,
    )


def from_environment(settings: Settings) -> Deployment:
    """The ``openai`` deployment: its key, the local fake provider (USE_FAKE_PROVIDER), or not configured."""
    models = SPEC.models
    if settings.openai_api_key:
        return Deployment(NAME, NAME, models, settings.openai_base_url, settings.openai_api_key)
    if settings.use_fake_provider:
        base = settings.openai_base_url or f"{settings.fake_provider_url.rstrip('/')}/v1"
        return Deployment(NAME, NAME, models, base, PLACEHOLDER_API_KEY, is_fake=True)
    return Deployment(NAME, NAME, models, missing="OPENAI_API_KEY")


SPEC = KindSpec(
    name=NAME,
    description="OpenAI's API (the openai SDK)",
    build=build,
    sdk_modules=("ultra_tasks.providers.openai_provider",),
    params=PARAMS,
    models=("gpt-*", "chatgpt-*", "o1*", "o3*", "o4*"),
    context_windows=(
        ("gpt-4.1*", 1_000_000),
        ("gpt-3.5*", 16_385),
        ("gpt-4o*", 128_000),
        ("o1*", 200_000),
        ("o3*", 200_000),
        ("o4*", 200_000),
    ),
    tiers=(
        ("claude-*haiku*", "gpt-4o-mini"),
        ("claude-*opus*", "o3"),
        ("claude-*", "gpt-4o"),
    ),
    probe_model="gpt-4o-mini",
    fakeable=True,
    from_environment=from_environment,
)
