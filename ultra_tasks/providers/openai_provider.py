"""OpenAI chat completions (and any OpenAI-compatible server) through the official SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai

from ultra_tasks.errors import ContentPolicyError, ServiceUnavailableException
from ultra_tasks.providers.base import LLMRequest, LLMResponse, Provider, Usage
from ultra_tasks.providers.clients import ClientShards
from ultra_tasks.providers.sdk_errors import map_sdk_error
from ultra_tasks.providers.sdk_post import post_json

#: request parameters OpenAI accepts beside messages/max_tokens/temperature
PASSTHROUGH_PARAMS = ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


class OpenAIProvider(Provider):
    """Chat completions through an ``openai.OpenAI`` client, or whatever ``make_client`` builds from the
    HTTP client options (``openai.AzureOpenAI`` for Azure); ``params`` are passed through when set."""

    def __init__(
        self,
        name: str,
        *,
        api_key: str,
        base_url: str | None,
        threads: int = 8,
        make_client: Callable[[dict[str, Any]], openai.OpenAI] | None = None,
        params: tuple[str, ...] = PASSTHROUGH_PARAMS,
    ) -> None:
        self.name = name
        self.params = params
        # max_retries=0: our own retry layer owns retries, so attempts are counted once and budgeted.
        self._clients = ClientShards(
            make_client
            or (
                lambda http: openai.OpenAI(
                    api_key=api_key,
                    base_url=base_url,
                    max_retries=0,
                    http_client=openai.DefaultHttpxClient(**http),
                )
            ),
            threads,
        )

    def client(self) -> openai.OpenAI:
        """The calling thread's SDK client."""
        return self._clients.get()

    def complete(self, request: LLMRequest, *, timeout: float) -> LLMResponse:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        for key in self.params:
            if key in request.params:
                kwargs[key] = request.params[key]
        started = time.perf_counter()
        try:
            completion = post_json(self._clients.get(), "/chat/completions", kwargs, timeout=timeout)
        except openai.OpenAIError as exc:
            raise map_sdk_error(exc, provider=self.name, model=request.model, sdk=openai) from exc
        except ValueError as exc:
            raise ServiceUnavailableException(
                "malformed completion (not JSON)", provider=self.name, model=request.model
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            choice = completion["choices"][0]
            text = choice["message"].get("content") or ""
            finish_reason = choice.get("finish_reason")
            usage = completion.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens") or 0)
            output_tokens = int(usage.get("completion_tokens") or 0)
            model = completion.get("model") or request.model
        except (IndexError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ServiceUnavailableException(
                "malformed completion (no choices)", provider=self.name, model=request.model
            ) from exc
        if finish_reason == "content_filter":
            raise ContentPolicyError(
                "answer withheld by the content filter", provider=self.name, model=request.model
            )
        return LLMResponse(
            text=str(text),
            model=str(model),
            provider=self.name,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            latency_ms=latency_ms,
            finish_reason=finish_reason,
        )

    def close(self) -> None:
        self._clients.close()
