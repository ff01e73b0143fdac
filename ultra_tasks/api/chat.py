"""``POST /v1/chat/completions`` (each request one job) and ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ultra_tasks.api import completions
from ultra_tasks.api.auth import authenticate
from ultra_tasks.api.tenants import TenantInfo
from ultra_tasks.api.waiter import JobWaiter, final_outcomes
from ultra_tasks.billing.meter import BUDGET_REASON
from ultra_tasks.config import get_settings
from ultra_tasks.errors import (
    ApiError,
    BudgetExceededError,
    DependencyUnavailableError,
    JobNotFoundError,
    JobValidationError,
    QueueFullError,
    SubmitOutcomeUnknownError,
    UnknownModelError,
)
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.submit import submit
from ultra_tasks.keys import PRIORITY_QUEUES

router = APIRouter(tags=["chat"])

#: longest Idempotency-Key header (the job table's column holds it with the tenant's id)
MAX_IDEMPOTENCY_KEY = 200


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        ) from None


def openai_param(field: str) -> str:
    return field.removeprefix("params.")


def submit_error(exc: Exception, job_id: str) -> ApiError:
    """What ``submit`` raised, as OpenAI's error."""
    if isinstance(exc, UnknownModelError):
        return ApiError(
            404,
            f"The model `{exc.model}` does not exist or you do not have access to it ({exc.message}).",
            param="model",
            code="model_not_found",
        )
    if isinstance(exc, JobValidationError):
        param = openai_param(exc.field)
        return ApiError(400, f"Invalid value for '{param}': {exc.message}", param=param)
    if isinstance(exc, QueueFullError):
        return ApiError(
            429,
            f"The queue is full: {exc}. Try again later.",
            type="requests",
            code="queue_full",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, BudgetExceededError):
        return insufficient_quota(str(exc), exc.retry_after)
    if isinstance(exc, SubmitOutcomeUnknownError):
        return ApiError(
            503,
            f"The database failed while job {job_id} was recorded; it may exist (GET /v1/jobs/{job_id}).",
            type="service_unavailable",
            code="submit_outcome_unknown",
        )
    raise exc


#: OpenAI's SDKs retry a 5xx (twice by default) unless the answer says otherwise, and each retry without an
#: Idempotency-Key would be a new job calling the provider again
NO_RETRY = {"x-should-retry": "false"}


def after_the_job(error: ApiError, *, rejoinable: bool) -> ApiError:
    """``error`` answered once a job exists: the client's SDK must not retry it into another job. A
    request with an Idempotency-Key may retry when ``rejoinable`` (the retry waits on the same job)."""
    if not rejoinable:
        error.headers = {**error.headers, **NO_RETRY}
    return error


def insufficient_quota(message: str, retry_after: float, job_id: str | None = None) -> ApiError:
    """OpenAI's answer to an account out of credit: 429, type and code ``insufficient_quota``."""
    headers = {"Retry-After": str(max(1, int(retry_after)))}
    if job_id is not None:
        headers["X-Job-Id"] = job_id
    return ApiError(
        429,
        f"You exceeded your current quota: {message}. Raise the tenant's budget "
        "(`ultra budgets set`) or wait for its next period.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers=headers,
    )


def priority_of(header: str | None) -> str:
    priority = (header or "default").strip().lower()
    if priority not in PRIORITY_QUEUES:
        raise ApiError(
            400,
            f"Invalid value for 'X-Priority': expected one of {', '.join(PRIORITY_QUEUES)}, got {header!r}.",
            param="X-Priority",
        )
    return priority


@router.post(
    "/v1/chat/completions", response_model=None, openapi_extra=completions.json_body(completions.ChatRequest)
)
async def create_chat_completion(
    request: Request,
    tenant: TenantInfo = Depends(authenticate),
    x_priority: str | None = Header(None, description="high | default | low"),
    idempotency_key: str | None = Header(
        None, max_length=MAX_IDEMPOTENCY_KEY, description="the same key again answers the first job"
    ),
) -> JSONResponse | StreamingResponse:
    """Run the request as a job (priority from X-Priority) and answer its ChatCompletion, whose id is
    the job's; past API_WAIT_TIMEOUT, 504 naming the job (follow it with GET /v1/jobs/{id}). A request
    repeating an Idempotency-Key of the tenant's answers the first one's job; none is made."""
    priority = priority_of(x_priority)
    body: completions.ChatRequest = completions.parse(completions.ChatRequest, await json_body(request))
    fields = body.submission()
    job_id = str(uuid.uuid4())
    waiter: JobWaiter = request.app.state.waiter
    timeout = get_settings().api_wait_timeout
    # registered before the job exists, so its news cannot come before anyone listens
    registration = waiter.register(job_id)
    try:
        try:
            handle = await run_in_threadpool(
                submit,
                **fields,
                priority=priority,
                tenant=tenant.id,
                job_id=job_id,
                idempotency_key=f"api:{tenant.id}:{idempotency_key}" if idempotency_key else None,
            )
        except SubmitOutcomeUnknownError as exc:
            raise after_the_job(submit_error(exc, job_id), rejoinable=idempotency_key is not None) from None
        except (JobValidationError, QueueFullError, BudgetExceededError) as exc:
            raise submit_error(exc, job_id) from None
        try:
            if handle.id != job_id:  # the key's first request made the job: wait for that one
                registration.close()
                job_id = handle.id
                registration = waiter.register(job_id)
                outcome = (await run_in_threadpool(final_outcomes, [job_id])).get(job_id)
                if outcome is None:
                    outcome = await registration.wait(timeout)
            else:
                outcome = await registration.wait(timeout)
        except DependencyUnavailableError as exc:
            # the job exists and goes on: the answer says so and names it, like a 504
            down = ApiError(
                503,
                f"{exc.dependency} failed while job {job_id} was awaited; it goes on. "
                f"GET /v1/jobs/{job_id} answers its state and result.",
                type="service_unavailable",
                code="dependency_unavailable",
                headers={"X-Job-Id": job_id},
            )
            raise after_the_job(down, rejoinable=idempotency_key is not None) from None
    finally:
        registration.close()
    if outcome is None:
        parked = await run_in_threadpool(_parked_for_budget, job_id)
        if parked is not None:
            # the job waits for its budget: a retry without the key would park another one beside it
            refused = insufficient_quota(
                f"job {job_id} is parked: {parked}", get_settings().budget_recheck_s, job_id
            )
            raise after_the_job(refused, rejoinable=idempotency_key is not None)
        pending = ApiError(
            504,
            f"Job {job_id} did not finish within {timeout:g} s; it goes on. "
            f"GET /v1/jobs/{job_id} answers its state and result.",
            type="timeout",
            code="job_pending",
            headers={"X-Job-Id": job_id},
        )
        raise after_the_job(pending, rejoinable=idempotency_key is not None)
    if outcome.get("status") != JobStatus.SUCCEEDED.value:
        # the job ran its retries and fallbacks: a retry of the request would only run them again
        failed = completions.failure(job_id, outcome)
        failed.headers = {**failed.headers, "X-Job-Id": job_id}
        raise after_the_job(failed, rejoinable=False)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            completions.stream_chunks(job_id, outcome, include_usage=include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Job-Id": job_id},
        )
    return JSONResponse(completions.chat_completion(job_id, outcome), headers={"X-Job-Id": job_id})


def _parked_for_budget(job_id: str) -> str | None:
    """Why the job waits, when it is parked because its tenant's budget cannot hold it now."""
    try:
        row = records.get_job(job_id)
    except JobNotFoundError:
        return None
    reason = row.status_reason or ""
    if row.status == JobStatus.PARKED.value and reason.startswith(BUDGET_REASON):
        return reason
    return None


def tenant_job(job_id: str, tenant: TenantInfo) -> Any:
    """The job's row when it is the tenant's; 404 otherwise (another tenant's job is not said to exist)."""
    try:
        uuid.UUID(job_id)
        row = records.get_job(job_id)
    except (ValueError, JobNotFoundError):
        row = None
    if row is None or row.tenant != tenant.id:
        raise ApiError(404, f"No job found with id '{job_id}'.", param="job_id", code="job_not_found")
    return row


@router.get("/v1/jobs/{job_id}")
def retrieve_job(job_id: str, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    """A job's state, and its ChatCompletion or error once it is final."""
    row = tenant_job(job_id, tenant)
    out: dict[str, Any] = {
        "id": row.id,
        "object": "job",
        "status": row.status,
        "priority": row.priority,
        "model": row.model,
        "created_at": int(row.created_at.timestamp()),
        "finished_at": int(row.finished_at.timestamp()) if row.finished_at else None,
        "status_reason": row.status_reason,
        "batch_id": row.batch_id,
        "result": None,
        "error": None,
    }
    if row.status == JobStatus.SUCCEEDED.value and row.result:
        out["result"] = completions.chat_completion(row.id, row.result, int(row.created_at.timestamp()))
    elif row.status in (JobStatus.FAILED.value, JobStatus.EXPIRED.value):
        out["error"] = completions.failure(row.id, {"status": row.status, "error": row.error}).body()["error"]
    return out
