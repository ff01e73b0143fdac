"""A provider kind declared in one module, as a plugin would: it answers locally, with no SDK."""

from __future__ import annotations

from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.kinds import register_kind
from ultra_tasks.providers.kinds.base import Deployment, KindSpec


class EchoProvider(Provider):
    def __init__(self, name: str) -> None:
        self.name = name

    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        text = f"echo-kind: {request.messages[-1].content}"
        return LLMResponse(text, request.model, self.name, Usage(1, 1), 0.1, "stop")


def build(deployment: Deployment, threads: int) -> Provider:
    return EchoProvider(deployment.name)


SPEC = register_kind(
    KindSpec(
        name="echo_kind",
        description="answers with the prompt (a test's plugin)",
        build=build,
        sdk_modules=("tests.integration.echo_kind",),
        needs_api_key=False,
        context_windows=(("echo-*", 4096),),
        probe_model="echo-small",
    )
)
