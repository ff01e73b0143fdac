"""OpenAI's Batch API: ``POST /v1/batches``, ``GET /v1/batches[/{id}]``, ``POST /v1/batches/{id}/cancel``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ultra_tasks.api import batch_store
from ultra_tasks.api.auth import authenticate
from ultra_tasks.api.chat import json_body
from ultra_tasks.api.completions import json_body as json_body_schema
from ultra_tasks.api.completions import parse
from ultra_tasks.api.tenants import TenantInfo
from ultra_tasks.config import get_settings

router = APIRouter(tags=["batches"])


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None = None


@router.post("/v1/batches", openapi_extra=json_body_schema(BatchCreate))
async def create_batch(request: Request, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    """Every line of the input file becomes a job of the batch (priority ``low`` unless
    ``metadata.priority`` says otherwise), all recorded with the batch in one transaction."""
    body: BatchCreate = parse(BatchCreate, await json_body(request))
    return await run_in_threadpool(
        batch_store.create,
        get_settings(),
        tenant.id,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
    )


@router.get("/v1/batches/{batch_id}")
def retrieve_batch(batch_id: str, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    return batch_store.retrieve(batch_id, tenant.id)


@router.post("/v1/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    return batch_store.cancel(batch_id, tenant.id)


@router.get("/v1/batches")
def list_batches(
    limit: int = Query(20, ge=1, le=100),
    after: str | None = Query(None, max_length=64),
    tenant: TenantInfo = Depends(authenticate),
) -> dict[str, Any]:
    data, has_more = batch_store.list_batches(tenant.id, limit=limit, after=after)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
