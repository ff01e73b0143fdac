"""OpenAI's Files API: ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``.

Uploads are JSON lines for ``purpose=batch``, at most API_MAX_FILE_BYTES, every line checked
(api/batch_input.py) before the file is kept: a bad file is refused whole, naming its bad lines.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ultra_tasks.api import file_store
from ultra_tasks.api.auth import authenticate
from ultra_tasks.api.batch_input import parse_input
from ultra_tasks.api.completions import MULTIPART_FILE
from ultra_tasks.api.tenants import TenantInfo
from ultra_tasks.config import get_settings
from ultra_tasks.errors import ApiError

router = APIRouter(tags=["files"])

PURPOSES = ("batch",)


def not_found(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id}", param="id", code="file_not_found")


@router.post("/v1/files", openapi_extra=MULTIPART_FILE)
async def create_file(request: Request, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    """Upload a batch input file (multipart: ``file`` and ``purpose=batch``)."""
    settings = get_settings()
    try:
        form = await request.form(max_files=1, max_fields=8)
    except Exception as exc:  # python-multipart's and Starlette's parse errors alike
        if isinstance(exc, ApiError):
            raise
        raise ApiError(400, f"Could not parse the multipart form: {exc}", param="file") from None
    try:
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose not in PURPOSES:
            raise ApiError(
                400, f"Invalid value for 'purpose': expected 'batch', got {purpose!r}.", param="purpose"
            )
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        content = await upload.read(settings.api_max_file_bytes + 1)
        if len(content) > settings.api_max_file_bytes:
            raise ApiError(
                413,
                f"File too large: the limit is {settings.api_max_file_bytes} bytes (API_MAX_FILE_BYTES).",
                param="file",
                code="file_too_large",
            )
        filename = upload.filename or "upload.jsonl"
    finally:
        await form.close()
    await run_in_threadpool(parse_input, content, settings)
    info = await run_in_threadpool(file_store.create_file, tenant.id, filename, str(purpose), content)
    return file_store.file_object(info)


@router.get("/v1/files")
def list_files(purpose: str | None = None, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    rows = file_store.list_files(tenant.id, purpose)
    return {"object": "list", "data": [file_store.file_object(r) for r in rows], "has_more": False}


@router.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    row = file_store.get_file(tenant.id, file_id)
    if row is None:
        raise not_found(file_id)
    return file_store.file_object(row)


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, tenant: TenantInfo = Depends(authenticate)) -> Response:
    content = file_store.file_content(tenant.id, file_id)
    if content is None:
        raise not_found(file_id)
    return Response(content, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, tenant: TenantInfo = Depends(authenticate)) -> dict[str, Any]:
    if not file_store.delete_file(tenant.id, file_id):
        raise not_found(file_id)
    return {"id": file_id, "object": "file", "deleted": True}
