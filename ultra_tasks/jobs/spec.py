"""``JobSpec``: a job's request as it is recorded, signed, queued and run, typed and bounded.

Producers build one from what ``submit`` was given (jobs/validation.py turns a prompt into messages and
checks the route); its JSON form is the message payload and the job table's ``request`` column; a worker
reads it back with ``JobSpec.from_payload``. Every error names the field at fault
(``messages[2].content``, ``params.seed``) as a ``JobValidationError``.

The size bounds come from the settings (``MAX_INPUT_CHARS``, ``JOB_MAX_*``) and apply where a job is
accepted: a worker checks a payload's shape only, so a job accepted under one fleet's limits is never
refused after it was accepted because a worker's limits differ.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ultra_tasks.config import Settings
from ultra_tasks.errors import JobValidationError
from ultra_tasks.providers.base import ChatMessage, LLMRequest
from ultra_tasks.resilience.chains import parse_entry

#: sampling parameters accepted in ``params`` (those the providers share or map)
ALLOWED_PARAMS = ("top_p", "top_k", "stop", "seed", "presence_penalty", "frequency_penalty")
MAX_TOKENS_LIMIT = 200_000
#: the job table's model column: a longer name could never be recorded (and every name becomes a label)
MAX_MODEL_CHARS = 128
#: a payload key that is the parking lot's, not the request's (mode/effects.py SLOT_FLAG)
_SLOT_FLAG = "_slot_reserved"


def _settings(info: ValidationInfo) -> Settings | None:
    context = info.context or {}
    settings = context.get("settings")
    return settings if isinstance(settings, Settings) else None


def _json_bytes(field: str, value: Any) -> int:
    try:
        return len(json.dumps(value, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise JobValidationError(field, f"must be JSON-serializable ({exc})") from None


def model_name(field: str, model: str) -> str:
    """A model name as a job may carry it: non-empty, at most MAX_MODEL_CHARS."""
    if not model.strip():
        raise JobValidationError(field, "must be a non-empty string")
    if len(model) > MAX_MODEL_CHARS:
        raise JobValidationError(field, f"is {len(model)} characters, over the limit of {MAX_MODEL_CHARS}")
    return model


class MessageSpec(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: StrictStr

    @field_validator("content")
    @classmethod
    def _content(cls, content: str) -> str:
        if not content.strip():
            raise ValueError("must be a non-empty string")
        return content


class JobSpec(BaseModel):
    """What a job asks for. Frozen: the recorded, signed and run request are one and the same."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: StrictStr
    messages: tuple[MessageSpec, ...] = Field(min_length=1)
    max_tokens: StrictInt
    temperature: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: read and fill the result cache for this job (when the request is cacheable)
    cache: StrictBool = True
    #: fall back along the model's chain when its provider cannot answer
    fallback: StrictBool = True
    #: the job's own fallback chain, "provider:model" entries, first tried first
    chain: tuple[StrictStr, ...] | None = None
    #: the HTTP API tenant whose job it is (its budget and ledger entries); None: Python and CLI jobs
    tenant: StrictStr | None = Field(None, max_length=36)

    @field_validator("model")
    @classmethod
    def _model(cls, model: str) -> str:
        return model_name("model", model)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _max_tokens(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise ValueError(f"expected an integer from 1 to {MAX_TOKENS_LIMIT}, got {value!r}")
        return value

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"expected a number from 0 to 2, got {value!r}")
        if not 0 <= value <= 2:
            raise ValueError(f"expected a number from 0 to 2, got {value!r}")
        return float(value)

    @field_validator("params")
    @classmethod
    def _params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for key in params:
            if key not in ALLOWED_PARAMS:
                raise JobValidationError(
                    f"params.{key}", f"unknown parameter (allowed: {', '.join(ALLOWED_PARAMS)})"
                )
        settings = _settings(info)
        if settings is not None:  # accepting a job (a worker's payload was JSON already)
            for key in params:
                _json_bytes(f"params.{key}", params[key])
            _bounded("params", params, settings.job_max_params_bytes, "JOB_MAX_PARAMS_BYTES")
        return params

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        settings = _settings(info)
        if settings is None:  # a worker's payload was JSON already, and the bound is the producer's
            return metadata
        size = _json_bytes("metadata", metadata)
        if size > settings.job_max_metadata_bytes:
            raise JobValidationError(
                "metadata",
                f"is {size} bytes as JSON, over the limit of {settings.job_max_metadata_bytes} "
                "(JOB_MAX_METADATA_BYTES)",
            )
        return metadata

    @field_validator("chain")
    @classmethod
    def _chain(cls, chain: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if chain is None:
            return None
        if not chain:
            raise JobValidationError(
                "chain",
                'expected a non-empty list such as ["openai:gpt-4o", "anthropic:claude-3-5-sonnet-latest"]',
            )
        settings = _settings(info)
        if settings is not None and len(chain) > settings.job_max_chain_length:
            raise JobValidationError(
                "chain",
                f"has {len(chain)} entries, over the limit of {settings.job_max_chain_length} "
                "(JOB_MAX_CHAIN_LENGTH)",
            )
        entries = []
        for i, item in enumerate(chain):
            entry = parse_entry(item, f"chain[{i}]")
            model_name(f"chain[{i}]", entry.model)
            entries.append(str(entry))
        return tuple(entries)

    @model_validator(mode="after")
    def _conversation(self, info: ValidationInfo) -> JobSpec:
        settings = _settings(info)
        if settings is not None and len(self.messages) > settings.job_max_messages:
            raise JobValidationError(
                "messages",
                f"has {len(self.messages)} messages, over the limit of {settings.job_max_messages} "
                "(JOB_MAX_MESSAGES)",
            )
        if not any(m.role == "user" for m in self.messages):
            raise JobValidationError("messages", "needs at least one user message")
        if settings is not None:
            size = sum(len(m.content) for m in self.messages)
            if size > settings.max_input_chars:
                raise JobValidationError(
                    "messages",
                    f"input is {size} characters, over the limit of {settings.max_input_chars} "
                    "(MAX_INPUT_CHARS)",
                )
        return self

    # --- reading and writing -----------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Any, settings: Settings | None = None) -> JobSpec:
        """Validate ``data`` (the JSON form); with ``settings``, within their bounds too.
        ``JobValidationError`` naming the field otherwise."""
        try:
            return cls.model_validate(data, context={"settings": settings})
        except ValidationError as exc:
            raise _job_error(exc) from None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> JobSpec:
        """A job message's request, as a worker reads it (its shape checked, not the producer's bounds)."""
        if _SLOT_FLAG in payload:
            payload = {k: v for k, v in payload.items() if k != _SLOT_FLAG}
        return cls.parse(payload)

    def to_payload(self) -> dict[str, Any]:
        """The JSON form: the message payload and the recorded request."""
        data = self.model_dump(mode="json")
        if self.chain is None:
            del data["chain"]
        if self.tenant is None:
            del data["tenant"]
        return data

    @cached_property
    def request(self) -> LLMRequest:
        """What the providers are asked (made once per spec: the spec is frozen)."""
        return LLMRequest(
            model=self.model,
            messages=tuple(ChatMessage(m.role, m.content) for m in self.messages),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            params=dict(self.params),
        )


def _bounded(field: str, value: Any, limit: int, setting: str) -> None:
    size = _json_bytes(field, value)
    if size > limit:
        raise JobValidationError(field, f"is {size} bytes as JSON, over the limit of {limit} ({setting})")


def _job_error(exc: ValidationError) -> JobValidationError:
    """The first error of a pydantic validation as ours, with the field named as a user writes it."""
    error = exc.errors()[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, JobValidationError):
        return original
    loc = list(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        message = f"unknown field (a job has: {', '.join(JobSpec.model_fields)})"
    elif error["type"] == "extra_forbidden":
        unknown = loc.pop()
        message = f"unknown key {unknown!r}; expected role and content"
    elif error["type"] == "model_type" and loc and isinstance(loc[-1], int):
        message = "expected an object with role and content"
    elif error["type"] in _PLAIN:
        expected = str((error.get("ctx") or {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        message = _PLAIN[error["type"]].format(
            got=error.get("input"), kind=type(error.get("input")).__name__, expected=expected
        )
    return JobValidationError(_path(loc) or "request", message)


#: pydantic's wording for common mistakes, in the words the rest of the errors use
_PLAIN = {
    "too_short": "must not be empty",
    "bool_type": "expected true or false, got {got!r}",
    "dict_type": "expected an object, got {kind}",
    "string_type": "expected a string, got {kind}",
    "tuple_type": "expected a list, got {kind}",
    "missing": "is required",
    "literal_error": "expected one of {expected}, got {got!r}",
}


def _path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
