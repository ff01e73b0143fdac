"""Run one job on a worker: record the run, answer from the cache or through the resilient provider
pipeline, record the outcome.

Idempotent by job id: a redelivered job whose outcome is already recorded returns it without calling a
provider again (acks-late delivery is at-least-once). ``attempts`` in the job table counts provider calls,
so a job's attempt budget holds across its runs.

A job that cannot run now (no entry of its chain can be called, or the operation mode holds its queue
back: mode/effects.py) comes back as a *parked* outcome; the task parks it in Redis (jobs/parking.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ultra_tasks import keys
from ultra_tasks.cache.llm import NAMESPACE as CACHE_NAMESPACE
from ultra_tasks.cache.llm import FillLock, is_cacheable, job_cache, request_digest
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import DependencyUnavailableError, NoProviderAvailableError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.liveness import is_dead
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.jobs.parking import CAUSE_MODE, CAUSE_PROVIDER, CAUSE_SLOT
from ultra_tasks.jobs.record_buffer import RecordWriter
from ultra_tasks.keys import QUEUE_DEFAULT
from ultra_tasks.mode.effects import ModeEffects
from ultra_tasks.providers.base import LLMRequest
from ultra_tasks.providers.registry import ProviderRegistry, default_registry
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis
from ultra_tasks.resilience.breaker import breaker_redis
from ultra_tasks.resilience.chains import chain_for
from ultra_tasks.resilience.pipeline import ChainFailed, ResilientCaller
from ultra_tasks.resilience.retry import AttemptBudget

log = logging.getLogger(__name__)

_caller: ResilientCaller | None = None
_caller_lock = threading.Lock()


def resilient_caller(
    registry: ProviderRegistry | None = None, settings: Settings | None = None
) -> ResilientCaller:
    """The process-wide pipeline (its adaptive timeouts and quota view are shared by all threads)."""
    global _caller
    if _caller is None:
        with _caller_lock:
            if _caller is None:
                settings = settings or get_settings()
                _caller = ResilientCaller(
                    registry or default_registry(), settings, breaker_redis(settings.redis_url)
                )
    return _caller


_effects: ModeEffects | None = None


def mode_effects(settings: Settings | None = None) -> ModeEffects:
    """The process-wide view of what the operation mode does (it caches the mode for a second)."""
    global _effects
    if _effects is None:
        with _caller_lock:
            if _effects is None:
                settings = settings or get_settings()
                _effects = ModeEffects(settings, shared_redis(settings.redis_url))
    return _effects


def failed_outcome(job_id: str, error: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": job_id, "status": JobStatus.FAILED.value, "error": error}


def parked_outcome(
    job_id: str, queue: str, wait_s: float, reason: str, cause: str, *, slot_reserved: bool = False
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": JobStatus.PARKED.value,
        "queue": queue,
        "retry_after": wait_s,
        "reason": reason,
        "cause": cause,
        "slot_reserved": slot_reserved,
    }


def execute_job(
    job_id: str,
    payload: dict[str, Any],
    *,
    queue: str | None = None,
    worker: str | None = None,
    caller: ResilientCaller | None = None,
    effects: ModeEffects | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Run the job and return its outcome: a JobResult dict, a failed outcome, or a parked one.

    ``queue`` is the queue the message came from (it decides what the operation mode allows).
    With the database unreachable the job still runs (see ``_claim_without_database``)."""
    settings = settings or get_settings()
    writer = RecordWriter(shared_redis(settings.redis_url))
    try:
        record = records.mark_running(job_id, worker, stale_after_s=settings.job_time_limit + 60)
    except DependencyUnavailableError as exc:
        return _execute_without_database(
            job_id,
            payload,
            exc,
            queue=queue,
            worker=worker,
            caller=caller,
            effects=effects,
            settings=settings,
        )
    if record is None:
        log.warning("job %s is not in the job table; running it unrecorded", job_id)
    elif record.status is JobStatus.SUCCEEDED and record.result:
        log.info("job %s already succeeded; returning the recorded result", job_id)
        return record.result
    elif record.status is JobStatus.FAILED:
        return failed_outcome(job_id, record.error or {})
    elif record.status is JobStatus.EXPIRED:
        return {"job_id": job_id, "status": JobStatus.EXPIRED.value}
    elif not record.claimed:
        dead = record.holder if record.status is JobStatus.RUNNING else None
        if dead and dead != worker and is_dead(shared_redis(settings.redis_url), dead):
            record = records.take_over(job_id, dead, worker)
            if record is not None:
                log.warning("job %s was held by %s, which died; taking it over", job_id, dead)
        if record is None or not record.claimed:
            log.info("job %s is running elsewhere; this duplicate delivery does nothing", job_id)
            return {"job_id": job_id, "status": "duplicate"}
    with _claim_back_on_outage(job_id, record, worker):
        return _run(job_id, payload, record, queue, worker, caller, effects, settings, writer)


def _execute_without_database(
    job_id: str,
    payload: dict[str, Any],
    cause: DependencyUnavailableError,
    *,
    queue: str | None,
    worker: str | None,
    caller: ResilientCaller | None,
    effects: ModeEffects | None,
    settings: Settings,
) -> dict[str, Any]:
    """Run a job while the job table is unreachable: the message carries the request, a Redis key stands
    in for the table's claim (so a duplicate message still does nothing), the result backend tells
    whether an earlier run finished, and every record write goes to the write buffer. What cannot be
    known meanwhile is the job's earlier provider calls: its attempt budget starts afresh."""
    from celery.result import AsyncResult

    from ultra_tasks.celery_app import app

    client = shared_redis(settings.redis_url)
    writer = RecordWriter(client)
    try:
        earlier = AsyncResult(job_id, app=app)
        if earlier.successful() and isinstance(earlier.result, dict):
            return dict(earlier.result)
        claim = keys.job_claim(job_id)
        holder = worker or "unknown"
        if not client.set(claim, holder, nx=True, ex=settings.job_time_limit + 60):
            current = client.get(claim)
            if current != holder and not (current and is_dead(client, str(current))):
                log.info("job %s is running elsewhere; this duplicate delivery does nothing", job_id)
                return {"job_id": job_id, "status": "duplicate"}
            client.set(claim, holder, ex=settings.job_time_limit + 60)
    except REDIS_DOWN as exc:
        raise DependencyUnavailableError("redis", f"{exc} (and {cause})") from exc
    log.warning("job %s runs while the job table is unreachable; its records are buffered", job_id)
    writer.buffer("started", job_id, utcnow(), worker=worker)
    try:
        record = records.RunStart(JobStatus.RUNNING, 0)
        with _claim_back_on_outage(job_id, record, worker):
            return _run(job_id, payload, record, queue, worker, caller, effects, settings, writer)
    finally:
        with contextlib.suppress(*REDIS_DOWN):
            if client.get(claim) == holder:
                client.delete(claim)


@contextlib.contextmanager
def _claim_back_on_outage(job_id: str, record: records.RunStart | None, worker: str | None) -> Iterator[None]:
    """Redis or the database going away mid-run is not the job's fault: the claim is given back (so the
    retry, or any other delivery, can take it) and the task retries the run once the dependency answers,
    rather than the job failing or staying "running" under a live worker."""
    try:
        yield
    except (DependencyUnavailableError, *REDIS_DOWN) as exc:
        log.warning("job %s interrupted by an unavailable dependency (%s); it will run again", job_id, exc)
        if record is not None and worker is not None:
            with contextlib.suppress(DependencyUnavailableError):
                records.unclaim(job_id, worker)
        if isinstance(exc, DependencyUnavailableError):
            raise
        raise DependencyUnavailableError("redis", str(exc)) from exc


def _run(
    job_id: str,
    payload: dict[str, Any],
    record: records.RunStart | None,
    queue: str | None,
    worker: str | None,
    caller: ResilientCaller | None,
    effects: ModeEffects | None,
    settings: Settings,
    writer: RecordWriter,
) -> dict[str, Any]:
    """The run itself, once the job is claimed (``record`` None: the job was never recorded)."""
    calls_before = record.attempts if record is not None else 0
    if record is not None and record.expires_at is not None and utcnow() >= record.expires_at:
        log.info("job %s expired before it ran", job_id)
        writer.write("expired", job_id)
        return {"job_id": job_id, "status": JobStatus.EXPIRED.value}

    # the job's own queue is authoritative (the starvation guard moves jobs up); else the message's
    queue = (record.queue if record is not None else None) or queue or QUEUE_DEFAULT
    admission = (effects or mode_effects(settings)).admit(queue, payload)

    request = LLMRequest.from_dict(payload)
    # ``readable``: NORMAL reads the cache for deterministic requests only (CACHE_NONDETERMINISTIC aside).
    # DEGRADED and EMERGENCY prefer the cache (MODE_PREFER_CACHE): every answer is kept and any answer
    # stored for this exact request serves it, so a repeat costs no provider call while the fleet is
    # short of capacity. (Only then: keeping every answer in NORMAL would cost each job a disk and a
    # Redis write for answers that are never read.)
    readable = is_cacheable(request, payload, settings)
    keep = settings.cache_enabled and payload.get("cache") is not False
    keep = keep and (readable or admission.prefer_cache)
    cache = job_cache(settings) if keep else None
    fill_lock: FillLock | None = None
    digest = request_digest(request) if cache is not None else ""
    if cache is not None and (readable or admission.prefer_cache):
        # A hit returns without touching the breaker, rate limits or the provider.
        started = time.perf_counter()
        hit = cache.get_sync(digest, CACHE_NAMESPACE)
        if hit is None and readable and admission.run:
            fill_lock = FillLock(cache, digest, lease_s=settings.provider_timeout + 5)
            if not fill_lock.acquire():
                hit = fill_lock.wait_for_value(settings.cache_stampede_wait)
                fill_lock = None
        if hit is not None:
            served_ms = (time.perf_counter() - started) * 1000
            result = _result(job_id, hit, calls=calls_before, latency_ms=served_ms, cached=True)
            if record is not None:
                writer.write("succeeded", job_id, result=result)
            return result

    if not admission.run:
        log.info("job %s parked for %.1fs: %s", job_id, admission.wait_s, admission.reason)
        cause = CAUSE_SLOT if admission.slot_reserved else CAUSE_MODE
        return _park(
            writer,
            job_id,
            record,
            queue,
            admission.wait_s,
            admission.reason,
            0,
            cause,
            slot_reserved=admission.slot_reserved,
        )

    caller = caller or resilient_caller(settings=settings)
    budget = AttemptBudget(max(0, settings.effective_attempt_budget - calls_before))
    try:
        chain = chain_for(
            request, settings, override=payload.get("chain"), fallback=payload.get("fallback", True)
        )
        outcome = caller.call(request, chain, budget)
        answer = {
            "text": outcome.response.text,
            "model": outcome.response.model,
            "provider": outcome.response.provider,
            "usage": outcome.response.usage.to_dict(),
            "finish_reason": outcome.response.finish_reason,
        }
        if cache is not None:
            cache.put_sync(digest, answer, CACHE_NAMESPACE)
    except NoProviderAvailableError as exc:
        log.info("job %s parked: %s", job_id, exc)
        return _park(writer, job_id, record, queue, exc.retry_after, str(exc), budget.used, CAUSE_PROVIDER)
    except ChainFailed as exc:
        error = {
            **exc.error.to_dict(),
            "attempts": exc.attempts,
            "provider_calls": calls_before + budget.used,
        }
        log.warning("job %s failed: %s", job_id, exc.error)
        if record is not None:
            writer.write("failed", job_id, error=error, calls=budget.used)
        return failed_outcome(job_id, error)
    except (DependencyUnavailableError, *REDIS_DOWN):
        raise  # _claim_back_on_outage gives the claim back; the task retries the whole run
    except Exception as exc:
        # A bug must not leave the job "running" forever: record it as failed, with what happened.
        log.exception("job %s failed unexpectedly", job_id)
        error = {
            "type": type(exc).__name__,
            "kind": "internal",
            "message": str(exc)[:2000],
            "provider_calls": calls_before + budget.used,
        }
        if record is not None:
            writer.write("failed", job_id, error=error, calls=budget.used)
        return failed_outcome(job_id, error)
    finally:
        if fill_lock is not None:
            fill_lock.release()
    result = _result(
        job_id,
        answer,
        calls=calls_before + budget.used,
        latency_ms=outcome.response.latency_ms,
        cached=False,
        fallback_used=outcome.fallback_used,
        attempt_errors=outcome.attempts,
    )
    if record is not None:
        writer.write("succeeded", job_id, result=result, calls=budget.used)
    return result


def _park(
    writer: RecordWriter,
    job_id: str,
    record: records.RunStart | None,
    queue: str,
    wait_s: float,
    reason: str,
    calls: int,
    cause: str,
    *,
    slot_reserved: bool = False,
) -> dict[str, Any]:
    """Record the job as parked (the task then parks it in Redis) and say so."""
    if record is not None:
        writer.write("parked", job_id, wait_s=wait_s, reason=reason, calls=calls)
    return parked_outcome(job_id, queue, wait_s, reason, cause, slot_reserved=slot_reserved)


def _result(
    job_id: str,
    answer: dict[str, Any],
    *,
    calls: int,
    latency_ms: float,
    cached: bool,
    fallback_used: bool = False,
    attempt_errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return JobResult(
        job_id=job_id,
        text=answer["text"],
        model=answer["model"],
        provider=answer["provider"],
        usage=dict(answer.get("usage") or {}),
        latency_ms=round(latency_ms, 3),
        finish_reason=answer.get("finish_reason"),
        cached=cached,
        fallback_used=fallback_used,
        attempts=calls,
        attempt_errors=list(attempt_errors or []),
    ).to_dict()
