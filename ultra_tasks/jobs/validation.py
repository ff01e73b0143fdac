"""Turn what a producer passed to ``submit`` into a ``Submission`` (a ``JobSpec`` and how to queue it), or
say exactly what is wrong.

Runs before anything is recorded or enqueued, so bad input never leaves a half-made job behind. The
request's own checks and bounds are ``JobSpec``'s (jobs/spec.py); here are the producer's conveniences
(a prompt and a system message instead of messages, the default ``max_tokens``) and what is not part of
the request: its priority, idempotency key, deadline, job id and the model's route.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ultra_tasks.config import Settings
from ultra_tasks.errors import JobValidationError
from ultra_tasks.jobs.spec import JobSpec
from ultra_tasks.keys import PRIORITY_QUEUES
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.providers.registry import provider_for_model

#: longest idempotency key (the job table's column)
MAX_IDEMPOTENCY_KEY_CHARS = 255


def _messages(prompt: Any, messages: Any, system: Any) -> tuple[str, Any]:
    """(the field to blame for the input's size, the messages as JobSpec takes them)."""
    if prompt is not None and messages is not None:
        raise JobValidationError("prompt", "give either prompt or messages, not both")
    if prompt is None and messages is None:
        raise JobValidationError("prompt", "give a prompt or messages")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise JobValidationError("system", "must be a non-empty string")
    head = [{"role": "system", "content": system}] if system is not None else []
    if prompt is None:
        if isinstance(messages, str | bytes | Mapping):
            raise JobValidationError("messages", "expected a list of {role, content} objects")
        if not system:
            return "messages", messages
        try:
            return "messages", [*head, *messages]
        except TypeError:
            raise JobValidationError("messages", "expected a list of {role, content} objects") from None
    if not isinstance(prompt, str):
        raise JobValidationError("prompt", f"expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise JobValidationError("prompt", "must not be empty")
    return "prompt", [*head, {"role": "user", "content": prompt}]


def validate_priority(priority: Any) -> str:
    if priority not in PRIORITY_QUEUES:
        raise JobValidationError(
            "priority", f"expected one of {', '.join(PRIORITY_QUEUES)}, got {priority!r}"
        )
    return str(priority)


def build_spec(
    settings: Settings,
    *,
    prompt: Any = None,
    messages: Any = None,
    system: Any = None,
    model: Any,
    max_tokens: Any = None,
    temperature: Any = None,
    params: Any = None,
    metadata: Any = None,
    cache: Any = True,
    fallback: Any = True,
    chain: Any = None,
) -> JobSpec:
    """A validated JobSpec within the settings' bounds, its model routed; JobValidationError naming the
    field otherwise (UnknownModelError when no provider serves the model)."""
    size_field, msgs = _messages(prompt, messages, system)
    data: dict[str, Any] = {
        "model": model,
        "messages": msgs,
        "max_tokens": settings.default_max_tokens if max_tokens is None else max_tokens,
        "temperature": temperature,
        "params": {} if params is None else params,
        "metadata": {} if metadata is None else metadata,
        "cache": cache,
        "fallback": fallback,
    }
    if chain is not None:
        if isinstance(chain, str | bytes):
            raise JobValidationError(
                "chain",
                'expected a non-empty list such as ["openai:gpt-4o", "anthropic:claude-3-5-sonnet-latest"]',
            )
        data["chain"] = chain
    try:
        spec = JobSpec.parse(data, settings)
    except JobValidationError as exc:
        if exc.field == "messages" and size_field == "prompt" and "MAX_INPUT_CHARS" in exc.message:
            raise JobValidationError("prompt", exc.message) from None
        raise
    provider_for_model(spec.model, settings)  # raises UnknownModelError (field "model")
    return spec


def build_request(settings: Settings, **fields: Any) -> LLMRequest:
    """The provider request of a job with these fields (validated as ``build_spec`` does)."""
    return build_spec(settings, **fields).request


@dataclass(frozen=True)
class Submission:
    """Everything ``submit`` was given, validated: what it records and publishes."""

    priority: str
    spec: JobSpec
    idempotency_key: str | None = None
    expires_in: float | None = None
    job_id: str | None = None

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON request that is recorded, signed and queued."""
        return self.spec.to_payload()


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
    spec = build_spec(
        settings,
        prompt=prompt,
        messages=messages,
        system=system,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
        metadata=metadata,
        cache=cache,
        fallback=fallback,
        chain=chain,
    )
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS
    ):
        raise JobValidationError(
            "idempotency_key", f"expected a string of 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 10**8
    ):
        raise JobValidationError("expires_in", f"expected a positive number of seconds, got {expires_in!r}")
    if job_id is not None:
        try:
            job_id = str(uuid.UUID(str(job_id)))
        except ValueError:
            raise JobValidationError("job_id", f"expected a UUID, got {job_id!r}") from None
    return Submission(priority, spec, idempotency_key, expires_in, job_id)


#: the fields a submission (one line of a batch) may have
SUBMISSION_FIELDS = tuple(inspect.signature(validate_submission).parameters)[1:]
