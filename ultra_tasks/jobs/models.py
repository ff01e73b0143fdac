"""Job status words and the result a producer gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    #: waiting in Redis, holding no worker slot, until a provider can be called (or the mode allows it)
    PARKED = "parked"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED)


@dataclass(frozen=True)
class JobResult:
    """What a finished job produced, and how."""

    job_id: str
    text: str
    model: str
    provider: str
    usage: dict[str, int]
    latency_ms: float
    finish_reason: str | None = None
    cached: bool = False
    fallback_used: bool = False
    attempts: int = 1
    attempt_errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": JobStatus.SUCCEEDED.value,
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "usage": dict(self.usage),
            "latency_ms": self.latency_ms,
            "finish_reason": self.finish_reason,
            "cached": self.cached,
            "fallback_used": self.fallback_used,
            "attempts": self.attempts,
            "attempt_errors": list(self.attempt_errors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        return cls(
            job_id=data["job_id"],
            text=data["text"],
            model=data["model"],
            provider=data["provider"],
            usage=dict(data.get("usage") or {}),
            latency_ms=float(data.get("latency_ms") or 0.0),
            finish_reason=data.get("finish_reason"),
            cached=bool(data.get("cached")),
            fallback_used=bool(data.get("fallback_used")),
            attempts=int(data.get("attempts") or 1),
            attempt_errors=list(data.get("attempt_errors") or []),
        )
