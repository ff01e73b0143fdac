"""Run one job on a worker: record the attempt, call the provider, record the outcome.

Idempotent by job id: a redelivered job whose outcome is already recorded returns it without calling a
provider again (acks-late delivery is at-least-once).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ultra_tasks.cache.llm import NAMESPACE as CACHE_NAMESPACE
from ultra_tasks.cache.llm import FillLock, is_cacheable, job_cache, request_digest
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import CircuitOpenException, ProviderError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry, default_registry
from ultra_tasks.resilience.breaker import CircuitBreaker, get_breaker

log = logging.getLogger(__name__)


def failed_outcome(job_id: str, error: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job_id, "status": JobStatus.FAILED.value, "error": error}


def deferred_outcome(job_id: str, exc: CircuitOpenException) -> dict[str, Any]:
    return {"job_id": job_id, "status": "deferred", "retry_after": exc.retry_after, "reason": str(exc)}


def provider_breaker(provider: str, model: str, settings: Settings) -> CircuitBreaker:
    """The breaker guarding ``provider`` (or provider and model, with CIRCUIT_BREAKER_SCOPE=model)."""
    name = provider if settings.circuit_breaker_scope == "provider" else f"{provider}:{model}"
    return get_breaker(name)


def execute_job(
    job_id: str,
    payload: dict[str, Any],
    *,
    worker: str | None = None,
    registry: ProviderRegistry | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the job and return its outcome (a JobResult dict, or a failed outcome with its error)."""
    settings = settings or get_settings()
    registry = registry or default_registry()
    record = records.mark_running(job_id, worker)
    if record is None:
        log.warning("job %s is not in the job table; running it unrecorded", job_id)
    elif record.status is JobStatus.SUCCEEDED and record.result:
        log.info("job %s already succeeded; returning the recorded result", job_id)
        return record.result
    elif record.status is JobStatus.FAILED:
        return failed_outcome(job_id, record.error or {})
    attempts = record.attempts if record is not None else 1

    request = LLMRequest.from_dict(payload)
    cache = job_cache(settings) if is_cacheable(request, payload, settings) else None
    fill_lock: FillLock | None = None
    if cache is not None:
        # A hit returns without touching the breaker, rate limits or the provider.
        started = time.perf_counter()
        digest = request_digest(request)
        hit = cache.get_sync(digest, CACHE_NAMESPACE)
        if hit is None:
            fill_lock = FillLock(cache, digest, lease_s=settings.provider_timeout + 5)
            if not fill_lock.acquire():
                hit = fill_lock.wait_for_value(settings.cache_stampede_wait)
                fill_lock = None
        if hit is not None:
            served_ms = (time.perf_counter() - started) * 1000
            return _succeeded(job_id, record, hit, attempts=attempts, latency_ms=served_ms, cached=True)

    provider = registry.for_model(request.model)
    try:
        # An open breaker refuses at once: the job waits for the provider instead of paying a timeout.
        with provider_breaker(provider.name, request.model, settings):
            response = provider.complete(request, timeout=settings.provider_timeout)
        answer = {
            "text": response.text,
            "model": response.model,
            "provider": response.provider,
            "usage": response.usage.to_dict(),
            "finish_reason": response.finish_reason,
        }
        if cache is not None:
            cache.put_sync(request_digest(request), answer, CACHE_NAMESPACE)
    except CircuitOpenException as exc:
        log.info("job %s deferred: %s", job_id, exc)
        if record is not None:
            records.mark_deferred(job_id)
        return deferred_outcome(job_id, exc)
    except ProviderError as exc:
        error = exc.to_dict()
        log.warning("job %s failed: %s", job_id, exc)
        if record is not None:
            records.mark_failed(job_id, error)
        return failed_outcome(job_id, error)
    finally:
        if fill_lock is not None:
            fill_lock.release()
    return _succeeded(job_id, record, answer, attempts=attempts, latency_ms=response.latency_ms, cached=False)


def _succeeded(
    job_id: str,
    record: records.RunStart | None,
    answer: dict[str, Any],
    *,
    attempts: int,
    latency_ms: float,
    cached: bool,
) -> dict[str, Any]:
    result = JobResult(
        job_id=job_id,
        text=answer["text"],
        model=answer["model"],
        provider=answer["provider"],
        usage=dict(answer.get("usage") or {}),
        latency_ms=round(latency_ms, 3),
        finish_reason=answer.get("finish_reason"),
        cached=cached,
        attempts=attempts,
    ).to_dict()
    if record is not None:
        records.mark_succeeded(job_id, result)
    return result
