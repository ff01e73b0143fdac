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
from typing import Any

from ultra_tasks.cache.llm import NAMESPACE as CACHE_NAMESPACE
from ultra_tasks.cache.llm import FillLock, is_cacheable, job_cache, request_digest
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.errors import DependencyUnavailableError, LeaseLostError, NoProviderAvailableError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.lease import Finished, Held, Lease, Leases, process_leases
from ultra_tasks.jobs.liveness import identity
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


class LeasedBudget(AttemptBudget):
    """The job's attempt budget, where taking an attempt also counts the call in the run's lease: a call
    goes out only while the lease holds, and a run that takes the job over continues its budget."""

    def __init__(self, total: int, leases: Leases, lease: Lease) -> None:
        super().__init__(total)
        self.leases, self.lease = leases, lease

    def take(self) -> bool:
        if not super().take():
            return False
        try:
            self.leases.begin_call(self.lease)
        except BaseException:
            super().refund()
            raise
        return True

    def refund(self, *, sent: bool = False) -> None:
        super().refund(sent=sent)
        self.leases.refund_call(self.lease, sent=sent)


def execute_job(
    job_id: str,
    payload: dict[str, Any],
    *,
    queue: str | None = None,
    worker: str | None = None,
    caller: ResilientCaller | None = None,
    effects: ModeEffects | None = None,
    settings: Settings | None = None,
    leases: Leases | None = None,
) -> dict[str, Any]:
    """Run the job under a lease and return its outcome: a JobResult dict, a failed, parked or expired
    outcome, ``duplicate`` (another run holds the job; ``retry_after``: when its lease would lapse) or
    ``lost`` (this run's lease was taken over mid-run: it stopped without calling or writing).

    ``queue`` is the queue the message came from (it decides what the operation mode allows). With the
    database unreachable the job still runs on its Redis lease, its writes buffered (record_buffer.py)."""
    settings = settings or get_settings()
    client = shared_redis(settings.redis_url)
    leases = leases or process_leases(settings, client)
    owner = worker or identity(None)
    if not leases.accepting():
        raise DependencyUnavailableError(
            "redis", "this worker cannot renew its job leases; it takes no new job until it can"
        )
    got = leases.acquire(job_id, owner)
    if isinstance(got, Held):
        log.info("job %s is held by %s; this duplicate delivery does nothing", job_id, got.holder)
        return {"job_id": job_id, "status": "duplicate", "retry_after": got.remaining_s}
    if isinstance(got, Finished):
        return _recorded_outcome(job_id, got.start)
    lease, start = got.lease, got.start
    if not lease.recorded:
        log.warning("job %s is not in the job table; running it unrecorded", job_id)
    writer = RecordWriter(client)
    final = False
    try:
        if start is None and lease.recorded:
            earlier = _backend_outcome(job_id)
            if earlier is not None:
                final = True
                return earlier
            log.warning("job %s runs while the job table is unreachable; its records are buffered", job_id)
            writer.buffer(
                "started", job_id, utcnow(), worker=owner, token=lease.token, lease_ttl_s=leases.ttl_s
            )
        outcome = _run(job_id, payload, lease, leases, start, queue, caller, effects, settings, writer)
        final = outcome.get("status") in FINAL_STATUSES
        return outcome
    except LeaseLostError as exc:
        log.warning("job %s: %s; it stopped without calling or writing", job_id, exc)
        return {"job_id": job_id, "status": "lost"}
    except (DependencyUnavailableError, *REDIS_DOWN) as exc:
        # Redis or the database going away mid-run is not the job's fault: the claim is given back (so the
        # retry, or any other delivery, can take it) and the task retries the run once the dependency
        # answers, rather than the job failing or staying "running" under a live worker.
        log.warning("job %s interrupted by an unavailable dependency (%s); it will run again", job_id, exc)
        if lease.recorded:
            with contextlib.suppress(DependencyUnavailableError):
                records.unclaim(job_id, lease.token)
        if isinstance(exc, DependencyUnavailableError):
            raise
        raise DependencyUnavailableError("redis", str(exc)) from exc
    finally:
        leases.release(lease, final=final)


FINAL_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.EXPIRED.value)


def _recorded_outcome(job_id: str, start: records.RunStart) -> dict[str, Any]:
    if start.status is JobStatus.SUCCEEDED and start.result:
        log.info("job %s already succeeded; returning the recorded result", job_id)
        return start.result
    if start.status is JobStatus.FAILED:
        return failed_outcome(job_id, start.error or {})
    return {"job_id": job_id, "status": JobStatus.EXPIRED.value}


def _backend_outcome(job_id: str) -> dict[str, Any] | None:
    """A run that finished earlier, from the outcome its worker kept in Redis while the job table cannot
    say (jobs/outcome_buffer.py)."""
    from ultra_tasks.jobs import outcome_buffer

    return outcome_buffer.read(shared_redis(), job_id)


def _run(
    job_id: str,
    payload: dict[str, Any],
    lease: Lease,
    leases: Leases,
    start: records.RunStart | None,
    queue: str | None,
    caller: ResilientCaller | None,
    effects: ModeEffects | None,
    settings: Settings,
    writer: RecordWriter,
) -> dict[str, Any]:
    """The run itself, once the job is leased (``start`` None: no row, or the database is down)."""
    record = _Record(writer, job_id, lease)
    calls_before = lease.charged
    if start is not None and start.expires_at is not None and utcnow() >= start.expires_at:
        log.info("job %s expired before it ran", job_id)
        record.write("expired")
        return {"job_id": job_id, "status": JobStatus.EXPIRED.value}

    # the job's own queue is authoritative (the starvation guard moves jobs up); else the message's
    queue = (start.queue if start is not None else None) or queue or QUEUE_DEFAULT
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
            record.write("succeeded", result=result)
            return result

    if not admission.run:
        log.info("job %s parked for %.1fs: %s", job_id, admission.wait_s, admission.reason)
        cause = CAUSE_SLOT if admission.slot_reserved else CAUSE_MODE
        return _park(
            record,
            job_id,
            queue,
            admission.wait_s,
            admission.reason,
            cause,
            slot_reserved=admission.slot_reserved,
        )

    caller = caller or resilient_caller(settings=settings)
    budget = LeasedBudget(max(0, settings.effective_attempt_budget - calls_before), leases, lease)
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
        return _park(record, job_id, queue, exc.retry_after, str(exc), CAUSE_PROVIDER)
    except ChainFailed as exc:
        error = {
            **exc.error.to_dict(),
            "attempts": exc.attempts,
            "provider_calls": calls_before + budget.used,
        }
        log.warning("job %s failed: %s", job_id, exc.error)
        record.write("failed", error=error)
        return failed_outcome(job_id, error)
    except (DependencyUnavailableError, LeaseLostError, *REDIS_DOWN):
        raise  # execute_job gives the claim back (or stops, its lease lost); the task retries the run
    except Exception as exc:
        # A bug must not leave the job "running" forever: record it as failed, with what happened.
        log.exception("job %s failed unexpectedly", job_id)
        error = {
            "type": type(exc).__name__,
            "kind": "internal",
            "message": str(exc)[:2000],
            "provider_calls": calls_before + budget.used,
        }
        record.write("failed", error=error)
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
    record.write("succeeded", result=result)
    return result


class _Record:
    """The run's writes to its job's row, each fenced by its lease's token and carrying the job's calls
    as an absolute count (idempotent, in whatever order the buffer applies them)."""

    def __init__(self, writer: RecordWriter, job_id: str, lease: Lease) -> None:
        self.writer, self.job_id, self.lease = writer, job_id, lease

    def write(self, op: str, **args: Any) -> None:
        if not self.lease.recorded:
            return
        self.lease.check()
        if op != "expired":
            args["attempts"] = self.lease.charged
        applied = self.writer.write(op, self.job_id, token=self.lease.token, **args)
        if applied is False:  # the row has seen a newer run: this one's outcome is not the job's
            self.lease.lost = True
            self.lease.check()


def _park(
    record: _Record,
    job_id: str,
    queue: str,
    wait_s: float,
    reason: str,
    cause: str,
    *,
    slot_reserved: bool = False,
) -> dict[str, Any]:
    """Record the job as parked (the task then parks it in Redis) and say so."""
    record.write("parked", wait_s=wait_s, reason=reason)
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
