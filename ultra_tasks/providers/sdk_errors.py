"""Map the official SDKs' exceptions into our tree, classified for retry and fallback decisions.

Both SDKs expose the same shape (APITimeoutError ⊂ APIConnectionError, APIStatusError with ``.response``),
so one mapping serves OpenAI, Anthropic and OpenAI-compatible servers.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

from ultra_tasks.clock import utcnow
from ultra_tasks.errors import (
    ContentPolicyError,
    ContextWindowExceededError,
    PermanentProviderError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderTimeoutError,
    QuotaExhaustedError,
    RateLimitedError,
    ServiceUnavailableException,
)

_QUOTA_MARKERS = ("insufficient_quota", "credit balance is too low", "exceeded your current quota")
_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "prompt is too long",
    "too many tokens",
)
_POLICY_MARKERS = ("content_policy", "content_filter", "content management policy", "safety system")


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (delta seconds or an HTTP date)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(raw) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


def _body_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    parts = [str(getattr(exc, "message", "") or "")]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            parts += [str(err.get(k) or "") for k in ("type", "code", "message")]
    return " ".join(parts).lower()


def map_sdk_error(exc: Exception, *, provider: str, model: str | None, sdk: Any) -> ProviderError:
    """Translate an exception raised by ``sdk`` (the openai or anthropic module) into a ProviderError."""
    if isinstance(exc, ProviderError):
        return exc
    kw: dict[str, Any] = {"provider": provider, "model": model}
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderTimeoutError("request timed out", **kw)
    if isinstance(exc, sdk.APIConnectionError):
        return ServiceUnavailableException(f"connection failed: {exc}", **kw)
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        text = _body_text(exc)
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        message = f"HTTP {status}: {getattr(exc, 'message', exc)}"
        kw.update(status_code=status, retry_after=retry_after)
        if any(marker in text for marker in _QUOTA_MARKERS) or status == 402:
            return QuotaExhaustedError(message, **kw)
        if status == 429:
            return RateLimitedError(message, **kw)
        if status in (408, 409) or status >= 500:
            # 408/409 are documented as retryable by both providers; 5xx and 529 (overloaded) are transient
            return ServiceUnavailableException(message, **kw)
        if status in (401, 403):
            return ProviderAuthError(message, **kw)
        if status in (400, 413) and any(marker in text for marker in _CONTEXT_MARKERS):
            return ContextWindowExceededError(message, **kw)
        if status == 400 and any(marker in text for marker in _POLICY_MARKERS):
            return ContentPolicyError(message, **kw)
        if status in (400, 404, 413, 422):
            return ProviderBadRequestError(message, **kw)
        return PermanentProviderError(message, **kw)
    # Anything else the SDK raises (e.g. a response that failed validation) is a provider-side fault;
    # callers only pass the SDK's own errors here, so our bugs still surface as themselves.
    return ServiceUnavailableException(f"{type(exc).__name__}: {exc}", **kw)
