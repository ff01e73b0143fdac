"""MODE_WEBHOOK_URL: each operation mode change is POSTed once, retried through failures, without blocking
the evaluator, and the URL's secrets never reach the logs. The receiver is a real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from conftest import _free_port
from sqlalchemy import delete

from ultra_tasks import SystemOperationMode, keys
from ultra_tasks.config import load_settings, reset_settings
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.errors import ConfigurationError
from ultra_tasks.mode.webhook import ModeWebhook, configured_webhook

pytestmark = [pytest.mark.timeout(90)]


class Receiver:
    """A webhook receiver on its own event loop: answers 500 to the first ``fail_first`` requests."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.port = _free_port()
        self.requests: list[tuple[int, dict[str, str], dict[str, Any]]] = []  # (status, headers, body)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str = "/hook", auth: str = "") -> str:
        return f"http://{auth}127.0.0.1:{self.port}{path}"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [body for status, _, body in self.requests if status == 200]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = 500 if len(self.requests) < self.fail_first else 200
        self.requests.append((status, dict(request.headers), body))
        return web.json_response({"ok": status == 200}, status=status)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(fail_first=getattr(request, "param", 2))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mode(database: str, redis_client: Any) -> Iterator[SystemOperationMode]:
    """A fresh NORMAL system: no components, no history."""
    with session_scope() as s:
        for model in (ComponentStatus, ModeTransition, OperationModeRecord):
            s.execute(delete(model))
    redis_client.delete(keys.mode_current())
    m = SystemOperationMode()
    yield m
    m.close()


def test_each_mode_change_is_posted_exactly_once_through_failing_deliveries(
    mode: SystemOperationMode, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODE_WEBHOOK_URL", receiver.url())
    reset_settings()

    # Given a receiver that fails the first two deliveries with HTTP 500
    assert mode.set_override("EMERGENCY", 600) == "EMERGENCY"
    assert receiver.accepted == []  # the evaluator returned before any delivery got through: no blocking
    assert mode.evaluate() == "EMERGENCY"  # no change: nothing is sent
    assert mode.clear_override() == "NORMAL"
    webhook = configured_webhook()
    assert webhook is not None and webhook.flush(60)

    # Then each transition was accepted once, in order, with the documented body
    history = list(reversed(mode.history()))
    assert [(e["from"], e["to"]) for e in receiver.accepted] == [
        ("NORMAL", "EMERGENCY"),
        ("EMERGENCY", "NORMAL"),
    ]
    assert [status for status, _, _ in receiver.requests] == [500, 500, 200, 200]
    for event, recorded in zip(receiver.accepted, history, strict=True):
        assert set(event) == {"from", "to", "reasons", "at"}
        assert event["at"] == recorded["at"] and event["reasons"] == recorded["reasons"]
    assert receiver.accepted[0]["reasons"][0]["kind"] == "override"
    # every retry of one event carries the same idempotency key; another event has another
    first_keys = {headers["Idempotency-Key"] for _, headers, _ in receiver.requests[:3]}
    assert len(first_keys) == 1
    assert receiver.requests[3][1]["Idempotency-Key"] not in first_keys
    assert webhook.stats == {"sent": 2, "failed": 0, "retries": 2, "dropped": 0}


@pytest.mark.parametrize("receiver", [100], indirect=True)
def test_an_undeliverable_event_is_given_up_after_bounded_attempts_and_logged_without_secrets(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = receiver.url(path="/hooks/T0KEN-abc123", auth="ops:s3cret-pw@")
    webhook = ModeWebhook(url, attempts=3, initial_wait_s=0.01, max_wait_s=0.05)
    event = {"from": "NORMAL", "to": "DEGRADED", "reasons": [], "at": "2026-01-01T00:00:00+00:00"}
    with caplog.at_level(logging.INFO, logger="ultra_tasks.mode.webhook"):
        assert webhook.deliver(event) is False
    assert len(receiver.requests) == 3  # bounded: three attempts, then given up
    assert "not delivered" in caplog.text and f"127.0.0.1:{receiver.port}" in caplog.text
    assert "s3cret-pw" not in caplog.text and "T0KEN" not in caplog.text and "ops:" not in caplog.text
    assert json.loads(json.dumps(receiver.requests[0][2])) == event
    assert receiver.requests[0][1]["Authorization"] == "Basic b3BzOnMzY3JldC1wdw=="  # ops:s3cret-pw


class _Recording(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``status`` (and ``location``), recording method, path and headers."""

    status = 200
    location = ""
    seen: list[tuple[str, str, dict[str, str]]]

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, dict(self.headers)))
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _http_server(status: int, location: str = "") -> Iterator[tuple[int, list[Any]]]:
    """A real HTTP server on 127.0.0.1: (its port, the requests it saw)."""
    seen: list[Any] = []
    handler = type("Handler", (_Recording,), {"status": status, "location": location, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("status", [302, 307, 301])
def test_a_redirect_is_not_followed_and_counts_as_a_failed_delivery(status: int) -> None:
    # Given a receiver that redirects to another host (localhost, not 127.0.0.1)
    with contextlib.ExitStack() as servers:
        other_port, elsewhere = servers.enter_context(_http_server(200))
        port, seen = servers.enter_context(_http_server(status, f"http://localhost:{other_port}/collect"))
        webhook = ModeWebhook(f"http://ops:s3cret-pw@127.0.0.1:{port}/hook", attempts=3, initial_wait_s=0.01)
        event = {"from": "NORMAL", "to": "DEGRADED", "reasons": [], "at": "2026-01-01T00:00:00+00:00"}
        # When an event is delivered
        delivered = webhook.deliver(event)
    # Then the redirect was not followed (no credentials, no GET elsewhere) and nothing counts as sent
    assert delivered is False
    assert elsewhere == []
    assert [(method, path) for method, path, _ in seen] == [("POST", "/hook")]  # not retried either
    assert webhook.stats == {"sent": 0, "failed": 1, "retries": 0, "dropped": 0}


def test_a_webhook_url_that_is_not_http_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="MODE_WEBHOOK_URL") as caught:
        load_settings(mode_webhook_url="ftp://hooks.example/T0KEN")
    assert "T0KEN" not in str(caught.value)  # webhook URLs are treated as secrets
