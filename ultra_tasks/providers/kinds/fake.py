"""The local fault-injecting fake provider (ultra_tasks/providers/fake_server.py), reached through the
``openai`` SDK's chat completions at ``base_url`` (default: FAKE_PROVIDER_URL). Named in a deployments
file on purpose only: nothing else ever fakes a deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultra_tasks.providers.kinds.base import PLACEHOLDER_API_KEY, Deployment, KindSpec

if TYPE_CHECKING:
    from ultra_tasks.providers.base import Provider

NAME = "fake"


def build(deployment: Deployment, threads: int) -> Provider:
    from ultra_tasks.providers.openai_provider import OpenAIProvider

    return OpenAIProvider(
        deployment.name,
        api_key=deployment.api_key or PLACEHOLDER_API_KEY,
        base_url=deployment.base_url,
        threads=threads,
    )


SPEC = KindSpec(
    name=NAME,
    description="the local fake provider (tests, demos)",
    build=build,
    sdk_modules=("ultra_tasks.providers.openai_provider",),
    needs_api_key=False,
    default_base_url=lambda settings: f"{settings.fake_provider_url.rstrip('/')}/v1",
)
