"""The producer API: ``submit(...)`` validates, records and publishes a job; ``JobHandle`` follows it."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from ultra_tasks.broker import publish_options
from ultra_tasks.celery_app import app
from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.errors import (
    DependencyUnavailableError,
    JobError,
    JobExpiredError,
    JobFailedError,
    JobTimeoutError,
    SubmitOutcomeUnknownError,
)
from ultra_tasks.jobs import admission, outcome_buffer, records
from ultra_tasks.jobs.models import JobResult, JobStatus
from ultra_tasks.jobs.validation import validate_submission
from ultra_tasks.keys import PRIORITY_QUEUES
from ultra_tasks.mode.policy import Mode
from ultra_tasks.redis_client import shared_redis
from ultra_tasks.runtime import runtime
from ultra_tasks.signing import sign

log = logging.getLogger(__name__)

#: Celery task name of the job path
RUN_JOB_TASK = "ultra.run_job"


def submit(
    prompt: str | None = None,
    *,
    messages: list[dict[str, str]] | None = None,
    model: str,
    priority: str = "default",
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    params: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    cache: bool = True,
    fallback: bool = True,
    chain: list[str] | None = None,
    idempotency_key: str | None = None,
    expires_in: float | None = None,
    job_id: str | None = None,
    tenant: str | None = None,
) -> JobHandle:
    """Validate, record and enqueue one LLM job; return its handle.

    Bad input raises ``JobValidationError`` naming the field, before anything is recorded or enqueued.
    Once the job is recorded the caller gets its handle, whatever happens to publishing (the job table is
    the outbox). A database that fails while the job is recorded raises ``SubmitOutcomeUnknownError``
    carrying the job's id: submitting again with ``job_id=`` that id returns the job if it was recorded
    and records it if not, never two jobs.
    ``cache=False`` makes this job skip the result cache (deterministic requests use it by default).
    ``fallback=False`` keeps it on the requested model; ``chain=["openai:gpt-4o", "anthropic:..."]``
    replaces its fallback chain. ``idempotency_key``: a second submit with the same key returns the
    first job's handle and records nothing. ``expires_in``: seconds after which the job is not run (it
    ends ``expired``). ``job_id``: a UUID the caller chose (the request spool replays with the id it
    handed out). ``tenant``: the HTTP API's tenant id the job belongs to (ultra_tasks/api/).

    The job table is the outbox: a job recorded while the broker is unreachable is accepted and published
    by the sweeper on beat once the broker is back. ``QueueFullError`` when the jobs held (accepted, not
    final) reach this priority's share of QUEUE_MAX_SIZE (QUEUE_SHED_AT; jobs/admission.py).
    ``BudgetExceededError`` when the tenant's budget for the period is known not to hold the job.
    """
    settings = get_settings()
    job = validate_submission(
        settings,
        prompt=prompt,
        messages=messages,
        model=model,
        priority=priority,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
        metadata=metadata,
        cache=cache,
        fallback=fallback,
        chain=chain,
        idempotency_key=idempotency_key,
        expires_in=expires_in,
        job_id=job_id,
    )
    payload, expires_in = job.payload, job.expires_in
    if tenant is not None:
        payload["tenant"] = tenant
        # a tenant whose budget already cannot hold this job hears so now, before anything is recorded
        runtime().billing.admit(tenant, job.spec.request)
    queue = PRIORITY_QUEUES[job.priority]
    new_id = job.job_id or str(uuid.uuid4())
    upgrade_schema()
    # the slot is taken before anything is recorded, so concurrent producers cannot overfill the bound
    slot = admission.reserve(new_id, job.priority, settings=settings)
    now = utcnow()
    try:
        recorded_id = records.insert_job(
            job_id=new_id,
            priority=job.priority,
            queue=queue,
            model=job.model,
            request=payload,
            now=now,
            expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
            idempotency_key=job.idempotency_key,
            guard=slot.guard(idempotency_key=job.idempotency_key),
            tenant=tenant,
        )
    except DependencyUnavailableError as exc:
        # the job may be recorded: the slot stays (a submit retried with this job id reuses it; if nothing
        # was recorded, the admission reconcile frees it)
        raise SubmitOutcomeUnknownError(new_id, str(exc)) from exc
    except BaseException:
        admission.give_back(slot)
        raise
    if recorded_id != new_id:  # an idempotency key used before: the earlier job holds its own slot
        admission.give_back(slot)
    # not a repeat of an earlier submit with the same idempotency key (a repeat with the same job id is
    # published again: harmless, and it may not have been the first time)
    if recorded_id == new_id:
        publish(recorded_id, queue, payload)
    handle = JobHandle(recorded_id)
    handle.notice = _mode_notice(queue)
    if handle.notice:
        log.warning("job %s accepted: %s", recorded_id, handle.notice)
    return handle


def _mode_notice(queue: str) -> str | None:
    """Why a job just accepted will not run soon, if the operation mode holds its queue back."""
    effects = runtime().effects
    if effects.reader.current() is not Mode.EMERGENCY or queue in effects.settings.mode_emergency_run_queues:
        return None
    return (
        f"operation mode is EMERGENCY: the job is accepted and recorded, and parked until the mode "
        f"improves (only {', '.join(effects.settings.mode_emergency_run_queues) or 'no'} queues run now)"
    )


def publish(job_id: str, queue: str, payload: dict[str, Any]) -> bool:
    """Send a recorded job to its queue and note it. False (logged) if the broker is unreachable: the
    record stays as the outbox entry the sweeper republishes."""
    try:
        _send(job_id, queue, payload)
    except (KombuOperationalError, RedisError, OSError) as exc:
        log.warning("job %s recorded but not published (%s); the sweeper will publish it", job_id, exc)
        return False
    try:
        records.mark_published(job_id)
    except DependencyUnavailableError as exc:
        # Sent but not noted: the sweeper sends it again later, and the second delivery finds the job
        # leased or final. The job exists and runs; the caller must not hear otherwise.
        log.warning("job %s published; the note of it was not recorded (%s)", job_id, exc)
    return True


def publish_many(jobs: list[tuple[str, str, dict[str, Any]]]) -> int:
    """Send recorded jobs (id, queue, payload) to their queues and note them in one statement; how many
    were sent. One the broker refused stays unpublished: the sweeper sends it later."""
    sent: list[str] = []
    for job_id, queue, payload in jobs:
        try:
            _send(job_id, queue, payload)
        except (KombuOperationalError, RedisError, OSError) as exc:
            log.warning("job %s recorded but not published (%s); the sweeper will publish it", job_id, exc)
            continue
        sent.append(job_id)
    try:
        records.mark_published_many(sent)
    except DependencyUnavailableError as exc:
        log.warning("%d jobs published; the note of it was not recorded (%s)", len(sent), exc)
    return len(sent)


def publish_released(job_id: str, queue: str, payload: dict[str, Any]) -> bool:
    """Put a parked job back onto its queue (the parked-job releaser's publish). The job table is told
    when it can be; a database outage must not hold released work back."""
    try:
        _send(job_id, queue, payload)
    except (KombuOperationalError, RedisError, OSError) as exc:
        log.warning("parked job %s not released (%s); it stays parked", job_id, exc)
        return False
    with contextlib.suppress(DependencyUnavailableError):
        records.mark_released(job_id)
    return True


def _send(job_id: str, queue: str, payload: dict[str, Any]) -> None:
    # ``argsrepr`` names the job, not its request: Celery would otherwise copy a repr of the request
    # (prompt structure, metadata) into every message's headers, where Flower and logs show it, and
    # building that repr was a sixth of a submit's CPU. ``sig``: workers run only messages signed with
    # the key they share with producers (signing.py). ``ignore_result``: the job's row is its result, so
    # the producer does not subscribe to a backend channel that nothing will ever publish on.
    app.send_task(
        RUN_JOB_TASK,
        args=[job_id, payload],
        kwargs={"sig": sign("job", job_id, payload)},
        task_id=job_id,
        argsrepr=f"[{job_id!r}, <request>]",
        kwargsrepr="{'sig': <signature>}",
        ignore_result=True,
        **publish_options(queue),
    )


class JobHandle:
    """Follows one job by id, from any process: ``JobHandle(job_id)``.

    The job's row is its result. While the database is down, a job that finished meanwhile is read from
    the outcome its worker kept in Redis until the row can take it (jobs/outcome_buffer.py).
    """

    #: the longest result() waits between two looks at the job (seconds); it starts at FIRST_POLL_S and
    #: grows by half each time, so a quick job is seen within milliseconds and a long one costs few reads
    POLL_INTERVAL_S = 0.25
    FIRST_POLL_S = 0.01

    def __init__(self, job_id: str) -> None:
        self.id = str(job_id)
        #: set by ``submit`` when the operation mode holds this job back (why, in words), else None
        self.notice: str | None = None

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status_reason(self) -> str | None:
        """Why the job is in its status, when that needs saying (e.g. why it is parked)."""
        return records.get_job(self.id).status_reason

    def status(self) -> JobStatus:
        """The job's current status, from the job table (its buffered outcome if the database is down)."""
        try:
            return JobStatus(records.get_job(self.id).status)
        except DependencyUnavailableError:
            outcome = self._backend_outcome()
            if outcome is None:
                raise
            return JobStatus(outcome.get("status", JobStatus.SUCCEEDED.value))

    def record(self) -> dict[str, Any]:
        """The job's row as a dict: status, request, result or error, provider, model, attempts, timings."""
        r = records.get_job(self.id)
        return {
            "id": r.id,
            "status": r.status,
            "priority": r.priority,
            "queue": r.queue,
            "model": r.model,
            "request": r.request,
            "result": r.result,
            "error": r.error,
            "provider": r.provider,
            "model_used": r.model_used,
            "attempts": r.attempts,
            "latency_ms": r.latency_ms,
            "worker": r.worker,
            "created_at": r.created_at.isoformat(),
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "parked_until": r.parked_until.isoformat() if r.parked_until else None,
            "status_reason": r.status_reason,
        }

    def result(self, timeout: float | None = None) -> JobResult:
        """Wait for the job to finish and return its result.

        Raises ``JobFailedError`` if it failed and ``JobTimeoutError`` after ``timeout`` seconds. Reads
        the job table; while the database is down, the outcome buffered in Redis.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = self.FIRST_POLL_S
        while True:
            outcome = self._table_outcome()
            if outcome is None:
                outcome = self._backend_outcome()
            if outcome is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(self.id, timeout or 0.0)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            time.sleep(pause if left is None else min(pause, left))
            pause = min(self.POLL_INTERVAL_S, pause * 1.5)
        if outcome.get("status") == JobStatus.FAILED.value:
            raise JobFailedError(self.id, outcome.get("error") or {})
        if outcome.get("status") == JobStatus.EXPIRED.value:
            raise JobExpiredError(self.id)
        return JobResult.from_dict(outcome)

    def _backend_outcome(self) -> dict[str, Any] | None:
        """The final outcome a worker kept in Redis while its record write waits for the database, or None
        (nothing kept: the job is not final, or its row has it)."""
        return outcome_buffer.read(shared_redis(), self.id)

    def _table_outcome(self) -> dict[str, Any] | None:
        try:
            r = records.get_job(self.id)
        except DependencyUnavailableError:
            return None
        if r.status == JobStatus.SUCCEEDED.value and r.result:
            return r.result
        if r.status in (JobStatus.FAILED.value, JobStatus.EXPIRED.value):
            return {"status": r.status, "error": r.error or {}}
        return None

    def retry(self) -> JobHandle:
        """Resubmit a failed or expired job (a dead letter) with a fresh attempt budget."""
        from ultra_tasks.billing import ledger
        from ultra_tasks.jobs.lease import forget_job_lease

        status = self.status()
        if not status.is_final or status is JobStatus.SUCCEEDED:
            raise JobError(self.id, f"job {self.id} is {status.value}: only failed or expired jobs retry")
        # the lease record counts the job's provider calls across runs: the fresh budget starts at zero,
        # while the calls sent stay level with the ledger's rows (a later run compares the two)
        forget_job_lease(shared_redis(), self.id, sent=ledger.count_of(self.id))
        # a dead letter retried is admitted again, through the same bound
        reset = admission.readmit(
            self.id, self.record()["priority"], lambda guard: records.reset_for_retry(self.id, guard=guard)
        )
        if reset is None:
            raise JobError(
                self.id, f"job {self.id} is {self.status().value}: only failed or expired jobs retry"
            )
        queue, payload = reset
        # an outcome kept from an outage would answer result() with the old failure: drop it
        with contextlib.suppress(RedisError, OSError):
            outcome_buffer.forget(shared_redis(), self.id)
        publish(self.id, queue, payload)
        return self
