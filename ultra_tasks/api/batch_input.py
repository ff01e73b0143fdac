"""A batch input file (OpenAI's format), each line checked before anything is recorded.

A line is ``{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}``: the
custom id unique in the file, the body a chat completion request this API serves, within the job bounds
and for a model some provider serves. A bad line is reported by its number and what is wrong with it
(``jobs/batch.py`` ``LineError``), and with any bad line the file is refused whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ultra_tasks.api.completions import ChatRequest, parse
from ultra_tasks.config import Settings
from ultra_tasks.errors import ApiError, JobValidationError
from ultra_tasks.jobs.batch import LineError
from ultra_tasks.jobs.validation import validate_submission

ENDPOINT = "/v1/chat/completions"
#: longest custom_id (the batch_lines column)
MAX_CUSTOM_ID = 512
_LINE_KEYS = {"custom_id", "method", "url", "body"}
#: bad lines a refusal lists at most
MAX_REPORTED = 20


@dataclass(frozen=True)
class BatchRequest:
    line: int
    custom_id: str
    fields: dict[str, Any]


def _line(number: int, raw: str, settings: Settings) -> BatchRequest | LineError:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return LineError(number, None, f"not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return LineError(number, None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _LINE_KEYS)
    if unknown:
        return LineError(number, unknown[0], "unknown field (a line has custom_id, method, url, body)")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        return LineError(number, "custom_id", f"expected a string of 1 to {MAX_CUSTOM_ID} characters")
    if obj.get("method") != "POST":
        return LineError(number, "method", f"expected POST, got {obj.get('method')!r}")
    if obj.get("url") != ENDPOINT:
        return LineError(number, "url", f"expected {ENDPOINT}, got {obj.get('url')!r}")
    try:
        body: ChatRequest = parse(ChatRequest, obj.get("body"))
        if body.stream:
            raise ApiError(400, "stream is not available in a batch", param="stream")
        fields = body.submission()
        validate_submission(settings, **fields, priority="low")
    except ApiError as exc:
        return LineError(number, f"body.{exc.param}" if exc.param else "body", exc.message)
    except JobValidationError as exc:
        return LineError(number, f"body.{exc.field.removeprefix('params.')}", exc.message)
    return BatchRequest(number, custom_id, fields)


def parse_input(content: bytes, settings: Settings) -> list[BatchRequest]:
    """Every request of a batch input file, or ``ApiError`` 400 listing the bad lines."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The file is not UTF-8 text (JSON lines expected).", param="file") from None
    requests: list[BatchRequest] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        if len(requests) + len(errors) >= settings.api_batch_max_lines:
            raise ApiError(
                400,
                f"The file has more than {settings.api_batch_max_lines} requests (API_BATCH_MAX_LINES).",
                param="file",
            )
        request = _line(number, raw, settings)
        if isinstance(request, LineError):
            errors.append(request)
            continue
        if request.custom_id in seen:
            errors.append(LineError(number, "custom_id", f"duplicate of line {seen[request.custom_id]}"))
            continue
        seen[request.custom_id] = number
        requests.append(request)
    if errors:
        listed = "; ".join(str(e) for e in errors[:MAX_REPORTED])
        more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
        raise ApiError(400, f"Invalid batch input: {len(errors)} bad line(s): {listed}{more}.", param="file")
    if not requests:
        raise ApiError(400, "The file has no requests.", param="file")
    return requests
