"""The optional webhook on operation mode changes (``MODE_WEBHOOK_URL``).

The process whose evaluation made a transition POSTs ``{"from", "to", "reasons", "at"}`` as JSON, so each
change is sent once fleet-wide (listeners in other processes hear it on the Redis channel instead).
Delivery runs on one background thread per process, in order, so the evaluator (a beat task) never waits
on a slow receiver; each event is retried with exponential backoff and jitter on connection errors,
timeouts, 429 and 5xx, a bounded number of times (about half a minute in all by default), then dropped
and logged. Logs name the receiver by scheme and host only: webhook URLs often carry a token.
Deliveries carry an ``Idempotency-Key`` header (the same for every retry of one event) so a receiver
can drop a repeat when an answer was lost on the way back.
No redirect is followed: urllib would resend the Authorization header (the URL's user:password) to
wherever a 3xx points, another host included, and turn the POST into a GET that "succeeds" without the
event. A 3xx is a failed delivery, not retried: point MODE_WEBHOOK_URL at the final address.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from ultra_tasks.config import get_settings

log = logging.getLogger(__name__)

#: deliveries of one event before it is dropped; waits double from the first, up to the longest
DEFAULT_ATTEMPTS = 5
DEFAULT_INITIAL_WAIT_S = 1.0
DEFAULT_MAX_WAIT_S = 16.0
#: seconds to connect and get an answer, per delivery
DEFAULT_TIMEOUT_S = 5.0
#: events waiting for delivery; beyond it the oldest is dropped (a receiver down for long must not
#: grow memory without bound)
MAX_PENDING = 100


class WebhookDeliveryError(Exception):
    """One delivery failed; ``retryable`` says whether another try may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every 3xx into an HTTPError instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def safe_target(url: str) -> str:
    """The URL as it may be logged: scheme, host and port, no credentials, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…"


class ModeWebhook:
    """Delivers mode change events to one URL, in order, from a background thread."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        initial_wait_s: float = DEFAULT_INITIAL_WAIT_S,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("MODE_WEBHOOK_URL: expected an http(s) URL")
        self.url = url
        self.target = safe_target(url)
        # urllib does not send a URL's user:password itself: it becomes a Basic Authorization header
        parts = urlsplit(url)
        self._post_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self._auth: str | None = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode()
        self.attempts = attempts
        self.initial_wait_s = initial_wait_s
        self.max_wait_s = max_wait_s
        self.timeout_s = timeout_s
        self.stats = {"sent": 0, "failed": 0, "retries": 0, "dropped": 0}
        self._pending: queue.Queue[dict[str, Any]] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for delivery and return at once."""
        while True:
            try:
                self._pending.put_nowait(event)
                break
            except queue.Full:
                try:
                    lost = self._pending.get_nowait()
                except queue.Empty:
                    continue
                self.stats["dropped"] += 1
                log.error("mode webhook %s: backlog full, dropped event %s", self.target, _describe(lost))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mode-webhook", daemon=True)
                self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was delivered or given up (tests, shutdown)."""
        done = threading.Event()

        def wait() -> None:
            self._pending.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            event = self._pending.get()
            try:
                self.deliver(event)
            except Exception:  # the thread must outlive any surprise
                log.exception("mode webhook %s: unexpected error", self.target)
            finally:
                self._pending.task_done()

    def deliver(self, event: dict[str, Any]) -> bool:
        """POST ``event`` with retries (blocking); True once the receiver accepted it."""
        body = json.dumps(event, separators=(",", ":")).encode()
        key = hashlib.sha256(body).hexdigest()[:32]

        def before_sleep(state: RetryCallState) -> None:
            self.stats["retries"] += 1
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "mode webhook %s: attempt %d failed (%s), retrying", self.target, state.attempt_number, exc
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            # doubling waits plus up to one initial wait of jitter, so a fleet's retries spread out
            wait=wait_exponential(multiplier=self.initial_wait_s, max=self.max_wait_s)
            + wait_random(0, self.initial_wait_s),
            retry=retry_if_exception(lambda e: isinstance(e, WebhookDeliveryError) and e.retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._post, body, key)
        except WebhookDeliveryError as exc:
            self.stats["failed"] += 1
            log.error("mode webhook %s: event %s not delivered: %s", self.target, _describe(event), exc)
            return False
        self.stats["sent"] += 1
        return True

    def _post(self, body: bytes, key: str) -> None:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "User-Agent": "ultra-tasks-mode-webhook",
        }
        if self._auth:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(self._post_url, data=body, method="POST", headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                where = safe_target(exc.headers.get("Location", "") or "?")
                raise WebhookDeliveryError(
                    f"HTTP {exc.code} redirect to {where} not followed", retryable=False
                ) from None
            retryable = exc.code == 429 or exc.code >= 500
            raise WebhookDeliveryError(f"HTTP {exc.code}", retryable=retryable) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WebhookDeliveryError(f"unreachable: {reason}", retryable=True) from None


def _describe(event: dict[str, Any]) -> str:
    return f"{event.get('from')} -> {event.get('to')} at {event.get('at')}"


_webhook: ModeWebhook | None = None
_webhook_lock = threading.Lock()


def configured_webhook() -> ModeWebhook | None:
    """This process's webhook for MODE_WEBHOOK_URL (None when unset)."""
    global _webhook
    url = get_settings().mode_webhook_url
    if not url:
        return None
    with _webhook_lock:
        if _webhook is None or _webhook.url != url:
            _webhook = ModeWebhook(url)
        return _webhook


def notify_mode_change(old: str, new: str, reasons: list[dict[str, Any]], at: datetime) -> None:
    """Send one transition to MODE_WEBHOOK_URL, if set, without blocking the caller."""
    webhook = configured_webhook()
    if webhook is not None:
        webhook.send({"from": old, "to": new, "reasons": reasons, "at": at.isoformat()})
