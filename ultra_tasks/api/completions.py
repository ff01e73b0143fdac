"""OpenAI's chat completion shapes: the request a client sends, and a job's outcome as OpenAI answers it
(a ``ChatCompletion``, its SSE chunks, an error)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ultra_tasks.errors import ApiError

#: messages one request may carry (the body-size bound and MAX_INPUT_CHARS bound their text)
MAX_MESSAGES = 1024
#: text parts one message may carry
MAX_PARTS = 64
#: characters per streamed content chunk
CHUNK_CHARS = 64
#: finish reasons OpenAI's clients know; a provider's others are said as "stop"
FINISH_REASONS = {"stop", "length", "content_filter", "tool_calls", "function_call"}
_FINISH_ALIASES = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: StrictStr


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] = Field(union_mode="left_to_right")
    name: StrictStr | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if len(self.content) > MAX_PARTS:
            raise ApiError(400, f"at most {MAX_PARTS} content parts per message", param="messages")
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = None


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: the parameters this API serves (others are refused by name)."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr
    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, max_length=256)
    metadata: dict[str, StrictStr] | None = None

    def submission(self) -> dict[str, Any]:
        """The fields of ``submit`` this request makes (checked again there, within the settings' bounds)."""
        if self.n not in (None, 1):
            raise ApiError(400, "Only n=1 is supported.", param="n")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ApiError(
                400, "Give max_tokens or max_completion_tokens, not both.", param="max_completion_tokens"
            )
        params = {
            name: getattr(self, name)
            for name in ("top_p", "stop", "seed", "presence_penalty", "frequency_penalty")
            if getattr(self, name) is not None
        }
        metadata: dict[str, Any] = {"api": "chat.completions"}
        if self.user:
            metadata["user"] = self.user
        if self.metadata:
            metadata["metadata"] = dict(self.metadata)
        return {
            "messages": [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages
            ],
            "model": self.model,
            "max_tokens": self.max_completion_tokens if self.max_tokens is None else self.max_tokens,
            "temperature": self.temperature,
            "params": params,
            "metadata": metadata,
        }


def param_of(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic location as OpenAI names parameters: ``messages.[0].content``."""
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in ("str", "list[TextPart]") or str(part).startswith(("function-", "literal")):
            continue  # pydantic's union branch names, not the caller's
        else:
            parts.append(str(part))
    return ".".join(parts)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """An operation's ``openapi_extra``: its JSON body is ``model`` (read by hand, so that every refusal
    keeps OpenAI's wording; the schema lands in the components, see api/app.py)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


#: the upload form of POST /v1/files, for the OpenAPI page
MULTIPART_FILE = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


def parse(model: type[BaseModel], data: Any) -> Any:
    """``data`` as ``model``, or ``ApiError`` 400 naming the first parameter at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = param_of(error["loc"]) or None
        if error["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        if error["type"] == "missing":
            raise ApiError(400, f"Missing required parameter: '{param}'.", param=param) from None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ApiError(400, f"Invalid value for '{param}': {message}.", param=param) from None


def finish_reason(reason: Any) -> str:
    reason = _FINISH_ALIASES.get(str(reason), str(reason)) if reason else "stop"
    return reason if reason in FINISH_REASONS else "stop"


def usage(result: dict[str, Any]) -> dict[str, int]:
    u = result.get("usage") or {}
    prompt = int(u.get("input_tokens") or u.get("prompt_tokens") or 0)
    completion = int(u.get("output_tokens") or u.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(u.get("total_tokens") or prompt + completion),
    }


def _ultra(result: dict[str, Any]) -> dict[str, Any]:
    """What only this API says: who served the job and how (OpenAI's clients keep unknown fields)."""
    return {
        "provider": result.get("provider"),
        "cached": bool(result.get("cached")),
        "fallback_used": bool(result.get("fallback_used")),
        "attempts": result.get("attempts"),
        "latency_ms": result.get("latency_ms"),
    }


def chat_completion(job_id: str, result: dict[str, Any], created: int | None = None) -> dict[str, Any]:
    """A succeeded job's result as an OpenAI ``ChatCompletion`` whose id is the job id."""
    return {
        "id": job_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": result.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.get("text", ""), "refusal": None},
                "finish_reason": finish_reason(result.get("finish_reason")),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "system_fingerprint": None,
        "ultra": _ultra(result),
    }


def stream_chunks(
    job_id: str, result: dict[str, Any], *, include_usage: bool, created: int | None = None
) -> Iterator[str]:
    """A succeeded job's result as OpenAI's server-sent ``chat.completion.chunk`` events, then [DONE]."""
    created = created or int(time.time())
    base = {"id": job_id, "object": "chat.completion.chunk", "created": created, "model": result.get("model")}

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {**base, "choices": choices, "system_fingerprint": None, **extra}
        if include_usage and "usage" not in extra:
            body["usage"] = None
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    text = str(result.get("text", ""))
    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for start in range(0, len(text), CHUNK_CHARS):
        piece = text[start : start + CHUNK_CHARS]
        yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    reason = finish_reason(result.get("finish_reason"))
    yield event([{"index": 0, "delta": {}, "finish_reason": reason}])
    if include_usage:
        yield event([], usage=usage(result))
    yield "data: [DONE]\n\n"


#: recorded error types that mean the request itself was bad (another try cannot help)
_CLIENT_ERRORS = {"ProviderBadRequestError", "ContextWindowExceededError", "ContentPolicyError"}


def failure(job_id: str, outcome: dict[str, Any]) -> ApiError:
    """A failed or expired job as OpenAI's error: 400 when the provider found the request bad, else 502."""
    if outcome.get("status") == "expired":
        return ApiError(504, f"Job {job_id} expired before it ran.", type="timeout", code="job_expired")
    error = outcome.get("error") or {}
    message = str(error.get("message") or "the job failed")[:2000]
    if error.get("type") in _CLIENT_ERRORS:
        code = "context_length_exceeded" if error.get("type") == "ContextWindowExceededError" else None
        return ApiError(400, f"Job {job_id} failed: {message}", code=code)
    return ApiError(502, f"Job {job_id} failed: {message}", type="api_error", code="job_failed")
