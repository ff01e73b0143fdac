"""Run one job on a worker, in stages: lease → expiry → mode admission → cache → call → record.

``execute_job`` takes the job's lease (a duplicate delivery or an already finished job ends there), then
``JobRun`` goes through the stages; each returns the run's typed outcome (jobs/outcomes.py) when the run
ends there, or None for the next. Every write to the job's row is fenced by the lease's token, and every
provider call is counted in the lease before it goes out, so a run whose lease was taken over stops
without calling or writing (``Lost``), and a run that takes a job over continues its attempt budget.

A job that cannot run now (no entry of its chain can be called, or the operation mode holds its queue
back: mode/effects.py) ends ``Parked``; the task parks it in Redis (jobs/parking.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from ultra_tasks.billing import ledger
from ultra_tasks.billing.meter import RunMeter
from ultra_tasks.cache.layered import DistributedCache
from ultra_tasks.cache.llm import NAMESPACE as CACHE_NAMESPACE
from ultra_tasks.cache.llm import FillLock, is_cacheable, request_digest
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings
from ultra_tasks.errors import (
    BudgetExceededError,
    DependencyUnavailableError,
    JobValidationError,
    LeaseLostError,
    NoProviderAvailableError,
)
from ultra_tasks.jobs import outcome_buffer, records
from ultra_tasks.jobs.lease import Finished, Held, Lease, Leases
from ultra_tasks.jobs.liveness import identity
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.jobs.outcomes import (
    Duplicate,
    Expired,
    Failed,
    Lost,
    Outcome,
    Parked,
    Succeeded,
    final_outcome,
)
from ultra_tasks.jobs.parking import CAUSE_BUDGET, CAUSE_MODE, CAUSE_PROVIDER, CAUSE_SLOT, carrier_wait
from ultra_tasks.jobs.record_buffer import RecordWriter
from ultra_tasks.jobs.spec import JobSpec
from ultra_tasks.keys import QUEUE_DEFAULT
from ultra_tasks.metrics import rollup
from ultra_tasks.mode.effects import Admission, ModeEffects
from ultra_tasks.providers.base import LLMRequest, LLMResponse
from ultra_tasks.providers.kinds.base import Deployment
from ultra_tasks.redis_client import REDIS_DOWN
from ultra_tasks.resilience.chains import chain_for
from ultra_tasks.resilience.pipeline import ChainFailed, ResilientCaller
from ultra_tasks.resilience.retry import AttemptBudget
from ultra_tasks.runtime import Runtime, runtime

log = logging.getLogger(__name__)


class LeasedBudget(AttemptBudget):
    """The job's attempt budget, where taking an attempt also counts the call in the run's lease: a call
    goes out only while the lease holds, and a run that takes the job over continues its budget. Its
    ``meter`` keeps the calls' accounts: reservations against the tenant's budget and ledger entries."""

    def __init__(self, total: int, leases: Leases, lease: Lease, meter: RunMeter | None = None) -> None:
        super().__init__(total)
        self.leases, self.lease, self.meter = leases, lease, meter

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
        if self.meter is not None and not sent:
            self.meter.cancel()

    def opening(self, deployment: Deployment, request: LLMRequest) -> None:
        if self.meter is not None:
            self.meter.opening(deployment, request)

    def answered(self, response: LLMResponse) -> None:
        if self.meter is not None:
            self.meter.answered(response)

    def failed(self, exc: BaseException) -> None:
        if self.meter is not None:
            self.meter.failed(exc)


def execute_job(
    job_id: str,
    payload: dict[str, Any],
    *,
    queue: str | None = None,
    worker: str | None = None,
    rt: Runtime | None = None,
    caller: ResilientCaller | None = None,
    effects: ModeEffects | None = None,
    settings: Settings | None = None,
    leases: Leases | None = None,
) -> Outcome:
    """Run the job under a lease and return its outcome (jobs/outcomes.py).

    ``queue`` is the queue the message came from (it decides what the operation mode allows). ``rt`` is
    this process's runtime unless given; ``caller``, ``effects``, ``settings`` and ``leases`` replace its
    parts. With the database unreachable the job still runs on its Redis lease, its writes buffered
    (record_buffer.py)."""
    rt = rt or runtime()
    if caller or effects or settings or leases:
        rt = Runtime(
            settings or rt.settings,
            redis_client=rt.redis,
            registry=rt.registry,
            caller=caller or (rt.caller if settings is None else None),
            effects=effects or (rt.effects if settings is None else None),
            leases=leases or rt.leases,
            cache=rt.cache if settings is None else None,
        )
    leases = rt.leases
    owner = worker or identity(None)
    if not leases.accepting():
        raise DependencyUnavailableError(
            "redis", "this worker cannot renew its job leases; it takes no new job until it can"
        )
    got = leases.acquire(job_id, owner)
    if isinstance(got, Held):
        log.info("job %s is held by %s; this duplicate delivery does nothing", job_id, got.holder)
        return Duplicate(job_id, got.remaining_s)
    if isinstance(got, Finished):
        return _recorded_outcome(job_id, got.start)
    lease, start = got.lease, got.start
    if not lease.recorded:
        log.warning("job %s is not in the job table; running it unrecorded", job_id)
    writer = RecordWriter(rt.redis)
    outcome: Outcome | None = None
    run: JobRun | None = None
    try:
        if start is None and lease.recorded:
            earlier = _backend_outcome(rt.redis, job_id)
            if earlier is not None and (outcome := final_outcome(earlier)) is not None:
                return outcome
            log.warning("job %s runs while the job table is unreachable; its records are buffered", job_id)
            writer.buffer(
                "started", job_id, utcnow(), worker=owner, token=lease.token, lease_ttl_s=leases.ttl_s
            )
        picked_up = time.monotonic()
        run = JobRun(rt, job_id, payload, lease, start, queue, writer)
        outcome = run.run()
        if outcome.final:
            _count_in_rollup(outcome.status, start, picked_up)
        return outcome
    except LeaseLostError as exc:
        log.warning("job %s: %s; it stopped without calling or writing", job_id, exc)
        return Lost(job_id)
    except (DependencyUnavailableError, *REDIS_DOWN) as exc:
        # Redis or the database going away mid-run is not the job's fault: the lease is given back (so the
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
        if run is not None:
            run.record.write_calls()
        leases.release(lease, final=outcome is not None and outcome.final)


def _count_in_rollup(status: str, start: records.RunStart | None, picked_up: float) -> None:
    """The status page's per-minute figures: a few in-process increments, flushed in batches."""
    created = start.created_at if start is not None else None
    wait_s = (utcnow() - created).total_seconds() - (time.monotonic() - picked_up) if created else None
    try:
        rollup.count_job(status, wait_s, time.monotonic() - picked_up)
    except Exception:  # metrics must never fail a job
        log.exception("could not count job in the rollup")


def _recorded_outcome(job_id: str, start: records.RunStart) -> Outcome:
    if start.status is JobStatus.SUCCEEDED and start.result:
        log.info("job %s already succeeded; returning the recorded result", job_id)
        return Succeeded(JobResult.from_dict(start.result))
    if start.status is JobStatus.FAILED:
        return Failed(job_id, start.error or {})
    return Expired(job_id)


def _backend_outcome(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """A run that finished earlier, from the outcome its worker kept in Redis while the job table cannot
    say (jobs/outcome_buffer.py)."""
    return outcome_buffer.read(client, job_id)


@dataclass
class _CachePlan:
    """How the run uses the cache: whether it reads it, where it keeps the answer, and the fill lock that
    makes it the one run computing this request's answer."""

    cache: DistributedCache | None = None
    digest: str = ""
    #: NORMAL reads the cache for deterministic requests only (CACHE_NONDETERMINISTIC aside)
    readable: bool = False
    #: any stored answer serves this request (DEGRADED and EMERGENCY prefer the cache)
    read: bool = False
    fill_lock: FillLock | None = None

    def release(self) -> None:
        if self.fill_lock is not None:
            self.fill_lock.release()


class JobRun:
    """One run of a leased job. ``run`` goes through the stages; each stage is a method that returns the
    outcome when the run ends there, or None for the next stage."""

    def __init__(
        self,
        rt: Runtime,
        job_id: str,
        payload: dict[str, Any],
        lease: Lease,
        start: records.RunStart | None,
        queue: str | None,
        writer: RecordWriter,
    ) -> None:
        self.rt, self.settings = rt, rt.settings
        self.job_id, self.payload, self.lease = job_id, payload, lease
        self.start = start
        # the job's own queue is authoritative (the starvation guard moves jobs up); else the message's
        self.queue = (start.queue if start is not None else None) or queue or QUEUE_DEFAULT
        self.meter = RunMeter(job_id, None, lease.token)
        self.record = _Record(writer, job_id, lease, self.meter)
        #: the job's provider calls before this run (a run that took it over continues its budget)
        self.calls_before = lease.charged

    def run(self) -> Outcome:
        spec = self.spec()
        if isinstance(spec, Failed):
            return spec
        self.meter.tenant = spec.tenant
        if self.lease.sent_before > 0 and self.lease.recorded:
            self.lost_calls(spec)
        outcome = self.expiry()
        if outcome is not None:
            return outcome
        admission = self.admission(spec)
        plan = self.cache_plan(spec, admission)
        try:
            return self.from_cache(plan, admission) or self.parked_by_mode(admission) or self.call(spec, plan)
        finally:
            plan.release()

    # --- stages ----------------------------------------------------------------------------------------
    def spec(self) -> JobSpec | Failed:
        """The job's request, read from its signed message. A malformed one (a producer of another
        version) fails the job at once, naming the field: no provider is asked something half-read."""
        try:
            return JobSpec.from_payload(self.payload)
        except JobValidationError as exc:
            log.warning("job %s has a malformed request: %s", self.job_id, exc)
            return self.failed({"type": type(exc).__name__, "kind": "invalid_request", "message": str(exc)})

    def lost_calls(self, spec: JobSpec) -> None:
        """Calls an earlier run sent and never entered in the ledger (its worker died with them in flight)
        are entered as unknown usage, before this run makes any: sent (the lease's count) minus entered."""
        try:
            missing = self.lease.sent_before - ledger.count_of(self.job_id)
            if missing > 0:
                entries = self.meter.lost_calls(missing, self.lease.previous_token, spec.request)
                ledger.record(entries)
                log.warning(
                    "job %s: %d call(s) of an earlier run entered with unknown usage", self.job_id, missing
                )
        except DependencyUnavailableError as exc:
            log.warning("job %s: earlier runs' calls not checked against the ledger (%s)", self.job_id, exc)

    def expiry(self) -> Expired | None:
        expires_at = self.start.expires_at if self.start is not None else None
        if expires_at is None or utcnow() < expires_at:
            return None
        log.info("job %s expired before it ran", self.job_id)
        self.record.write("expired")
        return Expired(self.job_id)

    def admission(self, spec: JobSpec) -> Admission:
        """What the operation mode allows this job's queue now."""
        return self.rt.effects.admit(self.queue, self.payload)

    def cache_plan(self, spec: JobSpec, admission: Admission) -> _CachePlan:
        # DEGRADED and EMERGENCY prefer the cache (MODE_PREFER_CACHE): every answer is kept and any answer
        # stored for this exact request serves it, so a repeat costs no provider call while the fleet is
        # short of capacity. Only then: keeping every answer in NORMAL would cost each job a disk and a
        # Redis write for answers that are never read.
        request = spec.request
        readable = is_cacheable(request, self.payload, self.settings)
        keep = self.settings.cache_enabled and spec.cache and (readable or admission.prefer_cache)
        if not keep:
            return _CachePlan()
        return _CachePlan(
            cache=self.rt.cache,
            digest=request_digest(request),
            readable=readable,
            read=readable or admission.prefer_cache,
        )

    def from_cache(self, plan: _CachePlan, admission: Admission) -> Succeeded | None:
        """A stored answer, without touching the breaker, rate limits or the provider. A run that will call
        takes the fill lock first; identical jobs wait (bounded) for its answer."""
        if plan.cache is None or not plan.read:
            return None
        started = time.perf_counter()
        hit = plan.cache.get_sync(plan.digest, CACHE_NAMESPACE)
        if hit is None and plan.readable and admission.run:
            lock = FillLock(plan.cache, plan.digest, lease_s=self.settings.provider_timeout + 5)
            if lock.acquire():
                plan.fill_lock = lock
            else:
                hit = lock.wait_for_value(self.settings.cache_stampede_wait)
        if hit is None:
            return None
        served_ms = (time.perf_counter() - started) * 1000
        return self.succeeded(hit, calls=self.calls_before, latency_ms=served_ms, cached=True)

    def parked_by_mode(self, admission: Admission) -> Parked | None:
        if admission.run:
            return None
        log.info("job %s parked for %.1fs: %s", self.job_id, admission.wait_s, admission.reason)
        cause = CAUSE_SLOT if admission.slot_reserved else CAUSE_MODE
        return self.parked(admission.wait_s, admission.reason, cause, slot_reserved=admission.slot_reserved)

    def call(self, spec: JobSpec, plan: _CachePlan) -> Outcome:
        """The provider call through the resilient pipeline, along the job's chain."""
        meter = self.meter
        if spec.tenant is not None:
            accounts = self.rt.billing
            meter.budget = accounts.budget_of(spec.tenant)
            meter.accounts = accounts if meter.budget is not None else None
        budget = LeasedBudget(
            max(0, self.settings.effective_attempt_budget - self.calls_before),
            self.rt.leases,
            self.lease,
            meter,
        )
        request = spec.request
        try:
            chain = chain_for(
                request,
                self.settings,
                override=list(spec.chain) if spec.chain is not None else None,
                fallback=spec.fallback,
            )
            outcome = self.rt.caller.call(request, chain, budget)
            answer = {
                "text": outcome.response.text,
                "model": outcome.response.model,
                "provider": outcome.response.provider,
                "usage": outcome.response.usage.to_dict(),
                "finish_reason": outcome.response.finish_reason,
            }
            if plan.cache is not None:
                plan.cache.put_sync(plan.digest, answer, CACHE_NAMESPACE)
        except NoProviderAvailableError as exc:
            log.info("job %s parked: %s", self.job_id, exc)
            wait, reason = exc.retry_after, str(exc)
            if exc.breaker is not None:
                wait = carrier_wait(
                    self.rt.redis,
                    exc.breaker,
                    carriers=self.settings.circuit_breaker_half_open_max_calls,
                    longest_s=self.settings.park_max_wait,
                )
                if wait > exc.retry_after:
                    reason += (
                        f"; other jobs carry its probes: this one waits for breaker {exc.breaker.name!r} "
                        f"to close (released in a ramp), {wait:.0f}s at the latest"
                    )
            return self.parked(wait, reason, CAUSE_PROVIDER)
        except BudgetExceededError as exc:
            log.info("job %s parked: %s", self.job_id, exc)
            return self.parked(exc.retry_after, str(exc), CAUSE_BUDGET)
        except ChainFailed as exc:
            log.warning("job %s failed: %s", self.job_id, exc.error)
            return self.failed(
                {
                    **exc.error.to_dict(),
                    "attempts": exc.attempts,
                    "provider_calls": self.calls_before + budget.used,
                }
            )
        except (DependencyUnavailableError, LeaseLostError, *REDIS_DOWN):
            raise  # execute_job gives the lease back (or stops, its lease lost); the task retries the run
        except Exception as exc:
            # A bug must not leave the job "running" forever: record it as failed, with what happened.
            log.exception("job %s failed unexpectedly", self.job_id)
            return self.failed(
                {
                    "type": type(exc).__name__,
                    "kind": "internal",
                    "message": str(exc)[:2000],
                    "provider_calls": self.calls_before + budget.used,
                }
            )
        return self.succeeded(
            answer,
            calls=self.calls_before + budget.used,
            latency_ms=outcome.response.latency_ms,
            cached=False,
            fallback_used=outcome.fallback_used,
            attempt_errors=outcome.attempts,
        )

    # --- recording: every outcome is written (fenced) before it is returned ------------------------------
    def succeeded(
        self,
        answer: dict[str, Any],
        *,
        calls: int,
        latency_ms: float,
        cached: bool,
        fallback_used: bool = False,
        attempt_errors: list[dict[str, Any]] | None = None,
    ) -> Succeeded:
        result = JobResult(
            job_id=self.job_id,
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
        )
        self.record.write("succeeded", result=result.to_dict())
        return Succeeded(result)

    def failed(self, error: dict[str, Any]) -> Failed:
        self.record.write("failed", error=error)
        return Failed(self.job_id, error)

    def parked(self, wait_s: float, reason: str, cause: str, *, slot_reserved: bool = False) -> Parked:
        """Record the job as parked (the task then parks it in Redis) and say so."""
        self.record.write("parked", wait_s=wait_s, reason=reason)
        return Parked(self.job_id, self.queue, wait_s, reason, cause, slot_reserved)


class _Record:
    """The run's writes to its job's row, each fenced by its lease's token and carrying the job's calls
    as an absolute count (idempotent, in whatever order the buffer applies them). An outcome write also
    carries the run's provider calls into the ledger, in its transaction (entered once each, whether
    the row takes the outcome or not)."""

    def __init__(self, writer: RecordWriter, job_id: str, lease: Lease, meter: RunMeter) -> None:
        self.writer, self.job_id, self.lease, self.meter = writer, job_id, lease, meter

    def write_calls(self) -> None:
        """Enter the calls no outcome write carried (the run stopped: its lease lost, an outage, a bug)."""
        self.meter.close()
        entries = self.meter.take_entries()
        if not entries:
            return
        try:
            self.writer.write("ledger", self.job_id, entries=entries)
        except DependencyUnavailableError as exc:
            log.error(
                "job %s: %d provider call(s) not entered in the ledger (%s)", self.job_id, len(entries), exc
            )

    def write(self, op: str, **args: Any) -> None:
        if not self.lease.recorded:
            return
        self.lease.check()
        if op != "expired":
            args["attempts"] = self.lease.charged
            self.meter.close()
            calls = self.meter.take_entries()
            if calls:
                args["ledger"] = calls
        applied = self.writer.write(op, self.job_id, token=self.lease.token, **args)
        if applied is False:  # the row has seen a newer run: this one's outcome is not the job's
            self.lease.lost = True
            self.lease.check()
