"""Fault-injecting fake LLM provider speaking the OpenAI and Anthropic HTTP APIs.

Answers are deterministic (``"echo: " + last user text``); faults are switched at run time
through a JSON control API under ``/_fake`` (see ``FakeProviderControl``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["FakeProviderControl", "FakeProviderServer", "serve"]

log = logging.getLogger(__name__)

OPENAI = "openai"
ANTHROPIC = "anthropic"
FAULT_KINDS = ("status", "quota", "latency", "hang", "drop", "malformed")
_SLEEP_MARKER = re.compile(r"\[\[sleep_ms=(\d+)\]\]")
_QUOTA_OPENAI = "You exceeded your current quota, please check your plan and billing details."
_QUOTA_ANTHROPIC = "Your credit balance is too low to access the Anthropic API."

# status -> (OpenAI error type, OpenAI code, Anthropic error type, default message)
_STATUS_ERRORS: dict[int, tuple[str, str | None, str, str]] = {
    400: ("invalid_request_error", None, "invalid_request_error", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error", "Invalid API key."),
    403: ("permission_error", None, "permission_error", "Permission denied."),
    404: ("invalid_request_error", "model_not_found", "not_found_error", "Not found."),
    413: ("invalid_request_error", None, "request_too_large", "Request too large."),
    422: ("invalid_request_error", None, "invalid_request_error", "Unprocessable request."),
    429: ("rate_limit_exceeded", "rate_limit_exceeded", "rate_limit_error", "Rate limit reached."),
    500: ("server_error", None, "api_error", "Internal server error."),
    502: ("server_error", None, "api_error", "Bad gateway."),
    503: ("server_error", None, "api_error", "Service unavailable."),
    504: ("server_error", None, "timeout_error", "Gateway timeout."),
    529: ("server_error", None, "overloaded_error", "Overloaded."),
}


def _error_response(
    api: str,
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    code: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    """An error response in the given provider's wire format."""
    fallback = _STATUS_ERRORS[500 if status >= 500 else 400]  # unlisted codes get a generic type
    oa_type, oa_code, an_type, default = _STATUS_ERRORS.get(status, fallback)
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    if api == OPENAI:
        headers["x-request-id"] = f"req_{uuid.uuid4().hex}"
        err = {
            "message": message or default,
            "type": error_type or oa_type,
            "param": None,
            "code": code or oa_code,
        }
        return web.json_response({"error": err}, status=status, headers=headers)
    headers["request-id"] = f"req_{uuid.uuid4().hex}"
    body = {"type": "error", "error": {"type": error_type or an_type, "message": message or default}}
    return web.json_response(body, status=status, headers=headers)


def _text(content: Any) -> str:
    """Text of a message content: a string or a list of ``{type: text, text}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))
    return ""


def _bad_number(value: Any, integer: bool = False) -> bool:
    kinds = int if integer else (int, float)
    return value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or value < 0)


#: how many request arrival times the stats keep
MAX_ARRIVALS = 1000
#: distinct prompts counted in ``by_prompt`` (beyond, new prompts are not counted)
MAX_PROMPTS = 100_000


def prompt_key(text: str) -> str:
    """How ``stats()["by_prompt"]`` names a request: a digest of its last user message."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Fault:
    id: str
    kind: str
    model: str
    api: str
    times: int | None  # remaining applications; None = unlimited
    params: dict[str, Any]
    hits: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "api": self.api,
            "times": self.times,
            "hits": self.hits,
            **self.params,
        }


def _parse_fault(fault_id: str, spec: Any) -> _Fault:
    """Validate a control-API fault spec; raises ValueError with a readable reason."""
    if not isinstance(spec, dict):
        raise ValueError("fault spec must be a JSON object")
    kind, times = spec.get("kind"), spec.get("times")
    model, api = spec.get("model") or "*", spec.get("api") or "*"
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {list(FAULT_KINDS)}")
    if not isinstance(model, str):
        raise ValueError("model must be a string")
    if api not in ("*", OPENAI, ANTHROPIC):
        raise ValueError("api must be '*', 'openai' or 'anthropic'")
    if _bad_number(times, integer=True) or times == 0:
        raise ValueError("times must be null or a positive integer")
    params = {k: v for k, v in spec.items() if k not in ("kind", "model", "api", "times")}
    for key in ("ms", "retry_after", "reset_after", "max_s"):
        if _bad_number(params.get(key)):
            raise ValueError(f"{key} must be a non-negative number")
    status = params.get("status")
    if kind == "status" and (status is None or _bad_number(status, True) or not 400 <= status <= 599):
        raise ValueError("status faults need an integer 'status' between 400 and 599")
    if kind == "latency" and params.get("ms") is None:
        raise ValueError("latency faults need 'ms'")
    if not isinstance(params.get("message", ""), str):
        raise ValueError("message must be a string")
    return _Fault(fault_id, kind, model, api, times, params)


def _validate(body: Any) -> str | None:
    """Why a chat/messages request body is invalid, or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required (a non-empty string)."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages: field required (a non-empty list of message objects)."
    if body.get("stream"):
        return "Streaming is not supported by the fake provider (stream=true); send stream=false."
    for key in ("max_tokens", "max_completion_tokens"):
        if _bad_number(body.get(key), integer=True):
            return f"{key}: must be a non-negative integer."
    return None


def _answer(api: str, body: dict[str, Any], system: str) -> web.Response:
    """The deterministic successful reply: a pure function of (model, messages, max tokens)."""
    model, messages = body["model"], body["messages"]
    last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    reply = "echo: " + last_user
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    truncated = limit is not None and len(reply.split()) > limit
    if truncated:
        reply = " ".join(reply.split()[:limit])
    prompt = len(system.split()) + sum(len(_text(m.get("content")).split()) for m in messages)
    completion = len(reply.split())
    if api == OPENAI:
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "length" if truncated else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            headers={"x-request-id": f"req_{uuid.uuid4().hex}"},
        )
    return web.json_response(
        {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "max_tokens" if truncated else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        },
        headers={"request-id": f"req_{uuid.uuid4().hex}"},
    )


@dataclass
class _Call:
    """Per-request bookkeeping so each request's outcome is counted exactly once."""

    outcome: str | None = None


class FakeProviderServer:
    """Fake OpenAI/Anthropic server running on its own event loop in a daemon thread.

    It has no authentication, so it listens on loopback unless ``allow_remote`` (see ultra_tasks.security).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False) -> None:
        from ultra_tasks.security import check_fake_provider_exposure

        check_fake_provider_exposure(host, allow_remote)
        self.host = host
        self.port = port
        self._faults: list[_Fault] = []
        self._fault_seq = 0
        self._stats: dict[str, Any] = self._fresh_stats(in_flight=0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the real port once started)."""
        if self._runner is None:
            raise RuntimeError("server not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def control(self) -> FakeProviderControl:
        return FakeProviderControl(self.url)

    def start(self) -> FakeProviderServer:
        """Start serving in a daemon thread; returns once the socket listens."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_async())
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            ready.set()
            if not failure:
                loop.run_forever()
                # Let cancelled handlers finish unwinding before closing the loop.
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-llm-provider", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread, self._loop = None, None
            raise failure[0]
        return self

    async def _start_async(self) -> None:
        self._stopping = asyncio.Event()
        # handler_cancellation: a client disconnect cancels its handler, which is how a hung
        # request ends early. A short shutdown_timeout bounds stop() even if a handler lingers.
        runner = web.AppRunner(
            self._make_app(),
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        # A large listen backlog so bursts of hundreds of simultaneous connects are not refused.
        site = web.TCPSite(runner, self.host, self.port, backlog=2048)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    def stop(self) -> None:
        """Stop promptly; hung or delayed requests get their connection closed."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_async(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop, self._thread, self._runner = None, None, None

    async def _stop_async(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()  # wakes hung/delayed handlers so shutdown need not wait for them
        await self._runner.cleanup()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # room for long prompts
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/_fake/faults", self._list_faults)
        app.router.add_post("/_fake/faults", self._add_fault)
        app.router.add_delete("/_fake/faults", self._clear_faults)
        app.router.add_delete("/_fake/faults/{fault_id}", self._delete_fault)
        app.router.add_get("/_fake/stats", self._get_stats)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    @staticmethod
    def _fresh_stats(in_flight: int) -> dict[str, Any]:
        return {
            "total": 0,
            "by_api": {OPENAI: 0, ANTHROPIC: 0},
            "by_model": {},
            "by_outcome": {},
            "in_flight": in_flight,
            "max_in_flight": in_flight,
            # epoch seconds of the most recent requests (bounded), for rate-limit checks
            "arrivals": [],
            # requests per last user message (prompt_key): how often each job reached the provider
            "by_prompt": {},
            # answers sent per last user message: the calls that completed, each with its usage
            "ok_by_prompt": {},
        }

    # -- control API (state is only touched on the server loop, so no locks) ------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _list_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [f.to_json() for f in self._faults]})

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            self._fault_seq += 1
            fault = _parse_fault(f"f{self._fault_seq}", await request.json())
        except ValueError as exc:  # JSONDecodeError is a ValueError too
            return web.json_response({"error": str(exc)}, status=400)
        self._faults.append(fault)
        return web.json_response({"id": fault.id})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        cleared, self._faults = len(self._faults), []
        return web.json_response({"cleared": cleared})

    async def _delete_fault(self, request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        kept = [f for f in self._faults if f.id != fault_id]
        if len(kept) == len(self._faults):
            return web.json_response({"error": f"no active fault {fault_id!r}"}, status=404)
        self._faults = kept
        return web.json_response({"cleared": 1})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats)

    async def _reset(self, request: web.Request) -> web.Response:
        # Keep in_flight: requests still running decrement it when they finish.
        self._faults = []
        self._stats = self._fresh_stats(in_flight=self._stats["in_flight"])
        return web.json_response({"ok": True})

    # -- provider endpoints ------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, OPENAI)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, ANTHROPIC)

    def _record(self, call: _Call, outcome: str) -> None:
        if call.outcome is None:
            call.outcome = outcome
            by_outcome = self._stats["by_outcome"]
            by_outcome[outcome] = by_outcome.get(outcome, 0) + 1

    async def _handle(self, request: web.Request, api: str) -> web.StreamResponse:
        stats, call = self._stats, _Call()
        stats["total"] += 1
        stats["by_api"][api] += 1
        stats["arrivals"] = [*stats["arrivals"][-(MAX_ARRIVALS - 1) :], time.time()]
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            return await self._process(request, api, call)
        except asyncio.CancelledError:
            self._record(call, "client_disconnected")
            raise
        finally:
            self._stats["in_flight"] -= 1  # the live dict: a reset may have replaced `stats`

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if the server began stopping meanwhile."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        # CancelledError takes aiohttp's "client went away" path: nothing written, nothing logged.
        raise asyncio.CancelledError

    def _select_fault(self, api: str, model: str) -> tuple[float, _Fault | None]:
        """Summed delay (ms) of leading latency faults, and the first other matching fault."""
        delay_ms, chosen = 0.0, None
        for fault in list(self._faults):
            if fault.api not in ("*", api) or fault.model not in ("*", model):
                continue
            fault.hits += 1
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            if fault.kind != "latency":
                chosen = fault
                break
            delay_ms += float(fault.params["ms"])
        return delay_ms, chosen

    async def _process(self, request: web.Request, api: str, call: _Call) -> web.StreamResponse:
        # anthropic>=2 sends api_key as "Authorization: Bearer"; older SDKs send x-api-key.
        key_headers = ("Authorization",) if api == OPENAI else ("x-api-key", "Authorization")
        if not any(request.headers.get(h, "").strip() for h in key_headers):
            self._record(call, "unauthenticated")
            return _error_response(api, 401, "No API key provided (Authorization or x-api-key header).")
        try:
            body = await request.json()
        except ValueError:
            self._record(call, "invalid_request")
            return _error_response(api, 400, "Could not parse the JSON body of your request.")
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            self._stats["by_model"][model] = self._stats["by_model"].get(model, 0) + 1
        problem = _validate(body)
        key = None
        if problem is None:
            last_user = next(
                (_text(m.get("content")) for m in reversed(body["messages"]) if m.get("role") == "user"), ""
            )
            by_prompt, key = self._stats["by_prompt"], prompt_key(last_user)
            if key in by_prompt or len(by_prompt) < MAX_PROMPTS:
                by_prompt[key] = by_prompt.get(key, 0) + 1
        if problem is not None or not isinstance(model, str):
            self._record(call, "invalid_request")
            return _error_response(api, 400, problem)

        system = _text(body.get("system")) if api == ANTHROPIC else ""
        texts = [system, *(_text(m.get("content")) for m in body["messages"])]
        delay_ms, fault = self._select_fault(api, model)
        delay_ms += max((int(ms) for t in texts for ms in _SLEEP_MARKER.findall(t)), default=0)
        if delay_ms > 0 and await self._pause(delay_ms / 1000):
            self._record(call, "stopped")
            return self._drop(request)

        params = fault.params if fault else {}
        if fault and fault.kind == "status":
            self._record(call, f"status_{params['status']}")
            return _error_response(
                api, params["status"], params.get("message"), retry_after=params.get("retry_after")
            )
        if fault and fault.kind == "quota":
            self._record(call, "quota")
            if api == OPENAI:
                return _error_response(
                    api,
                    429,
                    params.get("message") or _QUOTA_OPENAI,
                    error_type="insufficient_quota",
                    code="insufficient_quota",
                    retry_after=params.get("reset_after"),
                )
            return _error_response(
                api,
                400,
                params.get("message") or _QUOTA_ANTHROPIC,
                error_type="invalid_request_error",
                retry_after=params.get("reset_after"),
            )
        if fault and fault.kind == "drop":
            self._record(call, "drop")
            return self._drop(request)
        if fault and fault.kind == "malformed":
            # a 200 a client cannot use: not JSON, or JSON without the answer ("json": true)
            self._record(call, "malformed")
            if params.get("json"):
                return web.json_response({"id": "broken", "object": "unexpected"})
            return web.Response(text="<html>proxy error</html>", content_type="application/json")
        if fault and fault.kind == "hang":
            self._record(call, "hang")
            # Ends early when the client disconnects (handler cancellation) or on stop().
            if await self._pause(float(params.get("max_s", 600))):
                return self._drop(request)
        self._record(call, "ok")
        answered = self._stats["ok_by_prompt"]
        if key is not None and (key in answered or len(answered) < MAX_PROMPTS):
            answered[key] = answered.get(key, 0) + 1
        return _answer(api, body, system)


class FakeProviderControl:
    """Stdlib-only client for the ``/_fake`` control API."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # Ignore *_proxy env vars: the fake server is local and a proxy would hide it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ValueError(f"{method} {path} failed with {exc.code}: {detail}") from exc

    def add_fault(
        self, kind: str, model: str = "*", api: str = "*", times: int | None = None, **params: Any
    ) -> str:
        """Activate a fault; returns its id."""
        spec = {"kind": kind, "model": model, "api": api, "times": times, **params}
        return str(self._call("POST", "/_fake/faults", spec)["id"])

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_fake/faults")["faults"])

    def remove_fault(self, fault_id: str) -> None:
        self._call("DELETE", f"/_fake/faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/_fake/faults")

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_fake/stats"))

    def reset(self) -> None:
        self._call("POST", "/_fake/reset")

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "/healthz").get("ok"))
        except (OSError, ValueError):  # URLError and socket timeouts are OSErrors
            return False


def serve(host: str = "127.0.0.1", port: int = 8787, *, allow_remote: bool = False) -> None:
    """Run the fake provider in the foreground until SIGINT/SIGTERM."""
    server = FakeProviderServer(host, port, allow_remote=allow_remote)  # refuses before anything starts
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        log.info("fake LLM provider listening on %s", server.url)
        while not done.wait(0.5):  # short waits keep the main thread responsive to signals
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
