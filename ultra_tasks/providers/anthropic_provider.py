"""Anthropic messages through the official SDK."""

from __future__ import annotations

import time
from typing import Any

import anthropic

from ultra_tasks.errors import ServiceUnavailableException
from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.clients import ClientShards
from ultra_tasks.providers.sdk_errors import map_sdk_error
from ultra_tasks.providers.sdk_post import post_json

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
        for key in self.params:
            if key in request.params:
                kwargs[key] = request.params[key]
        if request.temperature is not None:
            # Anthropic accepts 0..1 where OpenAI accepts 0..2: clamp rather than fail the job.
            kwargs["temperature"] = min(1.0, request.temperature)
        if "stop" in request.params:
            stop = request.params["stop"]
            kwargs["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        started = time.perf_counter()
        try:
            message = post_json(self._clients.get(), "/v1/messages", kwargs, timeout=timeout)
        except anthropic.AnthropicError as exc:
            raise map_sdk_error(exc, provider=self.name, model=request.model, sdk=anthropic) from exc
        except ValueError as exc:
            raise ServiceUnavailableException(
                "malformed message (not JSON)", provider=self.name, model=request.model
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            text = "".join(
                str(block.get("text") or "") for block in message["content"] if block.get("type") == "text"
            )
            usage = message.get("usage") or {}
            input_tokens = int(usage.get("input_tokens") or 0)
            output_tokens = int(usage.get("output_tokens") or 0)
            model = message.get("model") or request.model
            stop_reason = message.get("stop_reason")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ServiceUnavailableException(
                "malformed message (no content)", provider=self.name, model=request.model
            ) from exc
        return LLMResponse(
            text=text,
            model=str(model),
            provider=self.name,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            latency_ms=latency_ms,
            finish_reason=stop_reason,
        )

    def close(self) -> None:
        self._clients.close()
