"""The FastAPI application: its routers, OpenAI's error shape for every refusal, the body-size bound and
the job waiter's life."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ultra_tasks.api.completions import ChatRequest, param_of
from ultra_tasks.api.waiter import JobWaiter
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.errors import ApiError, DependencyUnavailableError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: room for the multipart envelope and the form's other fields around an uploaded file (bytes)
MULTIPART_OVERHEAD = 64 * 1024


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class BodyLimit:
    """Refuse a request body over its bound with 413 before it is read whole: by its Content-Length when
    it says, else while it arrives. Uploads to /v1/files have API_MAX_FILE_BYTES, the rest
    API_MAX_BODY_BYTES."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.body_limit = settings.api_max_body_bytes
        self.file_limit = settings.api_max_file_bytes + MULTIPART_OVERHEAD

    def _too_large(self, limit: int) -> ApiError:
        return ApiError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.file_limit if scope["path"].rstrip("/") == "/v1/files" else self.body_limit
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(self._too_large(limit))(scope, receive, send)
                return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit)
            return message

        await self.app(scope, bounded, send)


def create_app(settings: Settings | None = None, waiter: JobWaiter | None = None) -> FastAPI:
    """The API application (the waiter starts and stops with it)."""
    from ultra_tasks.api import batches, chat, files

    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade_schema()
        app.state.waiter = (waiter or JobWaiter()).start()
        try:
            yield
        finally:
            app.state.waiter.stop()

    app = FastAPI(
        title="ultra-tasks",
        summary="An OpenAI-compatible API in front of the ultra-tasks queue.",
        version="1",
        lifespan=lifespan,
    )
    app.include_router(chat.router)
    app.include_router(files.router)
    app.include_router(batches.router)

    def openapi() -> dict[str, Any]:
        # the bodies read by hand (api/completions.py json_body) get their schemas in the components
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatRequest, batches.BatchCreate):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        loc = [p for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = param_of(loc) or None
        return error_response(ApiError(400, f"Invalid value for '{param}': {error.get('msg')}.", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return error_response(ApiError(exc.status_code, message, headers=dict(exc.headers or {})))

    @app.exception_handler(DependencyUnavailableError)
    async def _down(request: Request, exc: DependencyUnavailableError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(
            ApiError(
                503,
                f"{exc.dependency} is unavailable; try again shortly.",
                type="service_unavailable",
                code="dependency_unavailable",
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # logged with its traceback by the server; the caller learns nothing of the internals
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(
            ApiError(500, "The server had an error while processing your request.", type="server_error")
        )

    app.add_middleware(BodyLimit, settings=settings)
    return app
