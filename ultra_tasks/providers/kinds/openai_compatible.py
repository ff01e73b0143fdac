"""Any server speaking OpenAI chat completions (vLLM, Ollama, Gemini's OpenAI endpoint...) through the
``openai`` SDK with its ``base_url``. Without a deployments file, ``OPENAI_COMPAT_BASE_URL`` (and
``OPENAI_COMPAT_API_KEY``) define the ``openai_compat`` deployment, which MODEL_MAP routes models to; it is
never faked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ultra_tasks.providers.kinds.base import PLACEHOLDER_API_KEY, Deployment, KindSpec

if TYPE_CHECKING:
    from ultra_tasks.config import Settings
    from ultra_tasks.providers.base import Provider

NAME = "openai_compatible"
#: the deployment's name without a deployments file (MODEL_MAP and FALLBACK_CHAINS use it)
ENV_NAME = "openai_compat"
PARAMS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def build(deployment: Deployment, threads: int) -> Provider:
    from ultra_tasks.providers.openai_provider import OpenAIProvider

    return OpenAIProvider(
        deployment.name,
        # the SDK insists on a key; a local server usually ignores it
        api_key=deployment.api_key or PLACEHOLDER_API_KEY,
        base_url=deployment.base_url,
        threads=threads,
        params=PARAMS,
    )


def from_environment(settings: Settings) -> Deployment:
    # configured by its base URL alone, and only ever used when routed to on purpose (MODEL_MAP, chains)
    models = tuple(glob for glob, target in settings.model_map.items() if target == ENV_NAME)
    if settings.openai_compat_base_url:
        key = settings.openai_compat_api_key or PLACEHOLDER_API_KEY
        return Deployment(ENV_NAME, NAME, models, settings.openai_compat_base_url, key)
    return Deployment(ENV_NAME, NAME, models, missing="OPENAI_COMPAT_BASE_URL")


SPEC = KindSpec(
    name=NAME,
    description="any OpenAI-compatible server: vLLM, Ollama, Gemini's OpenAI endpoint (the openai SDK)",
    build=build,
    sdk_modules=("ultra_tasks.providers.openai_provider",),
    needs_api_key=False,
    needs_base_url=True,
    params=PARAMS,
    from_environment=from_environment,
)
