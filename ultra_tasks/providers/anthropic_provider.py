"""Anthropic messages through the official SDK."""

from __future__ import annotations

import time
from typing import Any

import anthropic

from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.clients import ClientShards
from ultra_tasks.providers.sdk_errors import map_sdk_error

PASSTHROUGH_PARAMS = ("top_p", "top_k")


class AnthropicProvider(Provider):
    def __init__(
        self,
        name: str,
        *,
        api_key: str,
        base_url: str | None,
        threads: int = 8,
        params: tuple[str, ...] = PASSTHROUGH_PARAMS,
    ) -> None:
        self.name = name
        self.params = params
        self._clients = ClientShards(
            lambda http: anthropic.Anthropic(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                http_client=anthropic.DefaultHttpxClient(**http),
            ),
            threads,
        )

    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        # Anthropic takes system prompts beside the conversation, not inside it.
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
            ],
        }
        if system:
            kwargs["system"] = system
        # Sampling parameters go in the body as-is: the SDK's signature does not list them in every release,
        # while the API accepts them for the models that support sampling.
        sampling: dict[str, Any] = {k: request.params[k] for k in self.params if k in request.params}
        if request.temperature is not None:
            # Anthropic accepts 0..1 where OpenAI accepts 0..2: clamp rather than fail the job.
            sampling["temperature"] = min(1.0, request.temperature)
        if sampling:
            kwargs["extra_body"] = sampling
        if "stop" in request.params:
            stop = request.params["stop"]
            kwargs["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        started = time.perf_counter()
        try:
            message = self._clients.get().messages.create(timeout=timeout, **kwargs)
        except anthropic.AnthropicError as exc:
            raise map_sdk_error(exc, provider=self.name, model=request.model, sdk=anthropic) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        text = "".join(getattr(block, "text", "") for block in message.content)
        return LLMResponse(
            text=text,
            model=message.model or request.model,
            provider=self.name,
            usage=Usage(
                input_tokens=message.usage.input_tokens or 0,
                output_tokens=message.usage.output_tokens or 0,
            ),
            latency_ms=latency_ms,
            finish_reason=message.stop_reason,
        )

    def close(self) -> None:
        self._clients.close()
