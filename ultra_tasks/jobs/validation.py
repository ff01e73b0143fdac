"""Turn what a producer passed to ``submit`` into a normalized request, or say exactly what is wrong.

Runs before anything is recorded or enqueued, so bad input never leaves a half-made job behind.
"""

from __future__ import annotations

import inspect
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ultra_tasks.config import Settings
from ultra_tasks.errors import JobValidationError
from ultra_tasks.keys import PRIORITY_QUEUES
from ultra_tasks.providers.base import ROLES, ChatMessage, LLMRequest
from ultra_tasks.providers.registry import provider_for_model

#: sampling parameters accepted in ``params`` (those the providers share or map)
ALLOWED_PARAMS = ("top_p", "top_k", "stop", "seed", "presence_penalty", "frequency_penalty")
MAX_TOKENS_LIMIT = 200_000
#: the job table's model column: a longer name could never be recorded (and every name becomes a label)
MAX_MODEL_CHARS = 128


def _model_name(field: str, model: Any) -> None:
    if not isinstance(model, str) or not model.strip():
        raise JobValidationError(field, "must be a non-empty string")
    if len(model) > MAX_MODEL_CHARS:
        raise JobValidationError(field, f"is {len(model)} characters, over the limit of {MAX_MODEL_CHARS}")


def _json_size(field: str, value: Any, limit: int, setting: str) -> None:
    size = len(json.dumps(value).encode())
    if size > limit:
        raise JobValidationError(field, f"is {size} bytes as JSON, over the limit of {limit} ({setting})")


def _json_value(field: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JobValidationError(field, f"must be JSON-serializable ({exc})") from None


def _messages(prompt: Any, messages: Any, system: Any) -> tuple[str, tuple[ChatMessage, ...]]:
    """Return (field name to blame for size, messages)."""
    if prompt is not None and messages is not None:
        raise JobValidationError("prompt", "give either prompt or messages, not both")
    if prompt is None and messages is None:
        raise JobValidationError("prompt", "give a prompt or messages")
    out: list[ChatMessage] = []
    if system is not None:
        if not isinstance(system, str) or not system.strip():
            raise JobValidationError("system", "must be a non-empty string")
        out.append(ChatMessage("system", system))
    if prompt is not None:
        if not isinstance(prompt, str):
            raise JobValidationError("prompt", f"expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise JobValidationError("prompt", "must not be empty")
        out.append(ChatMessage("user", prompt))
        return "prompt", tuple(out)
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise JobValidationError("messages", "expected a list of {role, content} objects")
    if not messages:
        raise JobValidationError("messages", "must not be empty")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise JobValidationError(where, "expected an object with role and content")
        extra = set(msg) - {"role", "content"}
        if extra:
            raise JobValidationError(where, f"unknown key(s) {sorted(extra)}; expected role and content")
        role = msg.get("role")
        if role not in ROLES:
            raise JobValidationError(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            raise JobValidationError(f"{where}.content", "must be a non-empty string")
        out.append(ChatMessage(role, content))
    if not any(m.role == "user" for m in out):
        raise JobValidationError("messages", "needs at least one user message")
    return "messages", tuple(out)


def validate_priority(priority: Any) -> str:
    if priority not in PRIORITY_QUEUES:
        raise JobValidationError(
            "priority", f"expected one of {', '.join(PRIORITY_QUEUES)}, got {priority!r}"
        )
    return str(priority)


def build_request(
    settings: Settings,
    *,
    prompt: Any = None,
    messages: Any = None,
    system: Any = None,
    model: Any,
    max_tokens: Any = None,
    temperature: Any = None,
    params: Any = None,
) -> LLMRequest:
    """A validated, normalized LLMRequest; JobValidationError naming the field otherwise."""
    size_field, msgs = _messages(prompt, messages, system)
    _model_name("model", model)
    provider_for_model(model, settings)  # raises UnknownModelError (field "model")

    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise JobValidationError(
            "max_tokens", f"expected an integer from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}"
        )
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or not 0 <= temperature <= 2
    ):
        raise JobValidationError("temperature", f"expected a number from 0 to 2, got {temperature!r}")

    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise JobValidationError("params", f"expected an object, got {type(params).__name__}")
    for key, value in params.items():
        if key not in ALLOWED_PARAMS:
            raise JobValidationError(
                f"params.{key}", f"unknown parameter (allowed: {', '.join(ALLOWED_PARAMS)})"
            )
        _json_value(f"params.{key}", value)
    _json_size("params", dict(params), settings.job_max_params_bytes, "JOB_MAX_PARAMS_BYTES")

    size = sum(len(m.content) for m in msgs)
    if size > settings.max_input_chars:
        raise JobValidationError(
            size_field,
            f"input is {size} characters, over the limit of {settings.max_input_chars} (MAX_INPUT_CHARS)",
        )
    return LLMRequest(
        model=model,
        messages=msgs,
        max_tokens=max_tokens,
        temperature=float(temperature) if temperature is not None else None,
        params=dict(params),
    )


def validate_chain(chain: Any, settings: Settings) -> list[str]:
    """A job's own fallback chain: a non-empty list of "provider:model" entries."""
    from ultra_tasks.resilience.chains import parse_entry

    if isinstance(chain, str | bytes) or not isinstance(chain, Sequence) or not chain:
        raise JobValidationError(
            "chain",
            'expected a non-empty list such as ["openai:gpt-4o", "anthropic:claude-3-5-sonnet-latest"]',
        )
    if len(chain) > settings.job_max_chain_length:
        raise JobValidationError(
            "chain",
            f"has {len(chain)} entries, over the limit of {settings.job_max_chain_length} "
            "(JOB_MAX_CHAIN_LENGTH)",
        )
    entries = []
    for i, item in enumerate(chain):
        entry = parse_entry(item if isinstance(item, str) else repr(item), f"chain[{i}]")
        _model_name(f"chain[{i}]", entry.model)
        entries.append(str(entry))
    return entries


def validate_metadata(metadata: Any, settings: Settings) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise JobValidationError("metadata", f"expected an object, got {type(metadata).__name__}")
    _json_value("metadata", dict(metadata))
    _json_size("metadata", dict(metadata), settings.job_max_metadata_bytes, "JOB_MAX_METADATA_BYTES")
    return dict(metadata)


@dataclass(frozen=True)
class Submission:
    """Everything ``submit`` was given, validated: what it records and publishes."""

    priority: str
    model: str
    payload: dict[str, Any]
    idempotency_key: str | None = None
    expires_in: float | None = None
    job_id: str | None = None


def validate_submission(
    settings: Settings,
    *,
    prompt: Any = None,
    messages: Any = None,
    model: Any,
    priority: Any = "default",
    system: Any = None,
    max_tokens: Any = None,
    temperature: Any = None,
    params: Any = None,
    metadata: Any = None,
    cache: Any = True,
    fallback: Any = True,
    chain: Any = None,
    idempotency_key: Any = None,
    expires_in: Any = None,
    job_id: Any = None,
) -> Submission:
    """All of ``submit``'s checks, touching nothing (batch submit validates every line with it first)."""
    priority = validate_priority(priority)
    request = build_request(
        settings,
        prompt=prompt,
        messages=messages,
        system=system,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
    )
    payload = request.to_dict()
    payload["metadata"] = validate_metadata(metadata, settings)
    if not isinstance(cache, bool):
        raise JobValidationError("cache", f"expected true or false, got {cache!r}")
    payload["cache"] = cache
    if not isinstance(fallback, bool):
        raise JobValidationError("fallback", f"expected true or false, got {fallback!r}")
    payload["fallback"] = fallback
    if chain is not None:
        payload["chain"] = validate_chain(chain, settings)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255
    ):
        raise JobValidationError("idempotency_key", "expected a string of 1 to 255 characters")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 10**8
    ):
        raise JobValidationError("expires_in", f"expected a positive number of seconds, got {expires_in!r}")
    if job_id is not None:
        try:
            job_id = str(uuid.UUID(str(job_id)))
        except ValueError:
            raise JobValidationError("job_id", f"expected a UUID, got {job_id!r}") from None
    return Submission(priority, request.model, payload, idempotency_key, expires_in, job_id)


#: the fields a submission (one line of a batch) may have
SUBMISSION_FIELDS = tuple(inspect.signature(validate_submission).parameters)[1:]
