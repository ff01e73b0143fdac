"""Azure OpenAI through the official SDK's ``openai.AzureOpenAI`` client: ``base_url`` is the resource's
endpoint, ``options.api_version`` its API version and ``options.deployment`` the Azure deployment name
(default: the requested model's name, as Azure's SDK does)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ultra_tasks.providers.kinds.base import Deployment, KindSpec

if TYPE_CHECKING:
    import openai

    from ultra_tasks.providers.base import Provider

NAME = "azure_openai"
PARAMS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


class AzureOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: the API version every request names, e.g. 2024-10-21
    api_version: str
    #: the Azure deployment name (the URL's /openai/deployments/<name>)
    deployment: str | None = None


def client_factory(deployment: Deployment) -> Any:
    """Builds the deployment's ``AzureOpenAI`` client from the HTTP client options."""
    import openai

    options = AzureOptions.model_validate(deployment.options)

    def make(http: dict[str, Any]) -> openai.OpenAI:
        return openai.AzureOpenAI(
            api_key=deployment.api_key,
            azure_endpoint=deployment.base_url or "",
            api_version=options.api_version,
            azure_deployment=options.deployment,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(**http),
        )

    return make


def build(deployment: Deployment, threads: int) -> Provider:
    from ultra_tasks.providers.openai_provider import OpenAIProvider

    assert deployment.api_key is not None
    return OpenAIProvider(
        deployment.name,
        api_key=deployment.api_key,
        base_url=deployment.base_url,
        threads=threads,
        make_client=client_factory(deployment),
        params=PARAMS,
    )


SPEC = KindSpec(
    name=NAME,
    description="Azure OpenAI (the openai SDK's AzureOpenAI client)",
    build=build,
    sdk_modules=("ultra_tasks.providers.openai_provider",),
    needs_base_url=True,
    options=AzureOptions,
    params=PARAMS,
    probe_model="gpt-4o-mini",
)
