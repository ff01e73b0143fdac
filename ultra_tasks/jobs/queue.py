"""The seed's ``PersistentRequestQueue`` and ``RetryableRequest``, on top of the Celery queues.

A ``RetryableRequest`` names a registered operation and carries JSON arguments: nothing is pickled, so a
tampered queue entry can never run code. ``llm.generate`` (the seed's ``llm_client.generate(prompt,
model)``) becomes an ordinary job (``submit``); any other operation registered with ``@operation("name")``
runs as a Celery task on the same prioritized queues, retried up to ``max_retries`` times.

``storage_path`` is the producer's local spool, in JSON lines: a request that can be neither recorded nor
published (database and broker unreachable) is appended there and replayed by ``process_queue()`` later.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultra_tasks.broker import publish_options
from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError, JobValidationError, QueueFullError
from ultra_tasks.keys import PRIORITY_QUEUES

log = logging.getLogger(__name__)

#: the built-in operation: an LLM job through the whole job path
GENERATE = "llm.generate"
_operations: dict[str, Callable[..., Any]] = {}


def operation(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name`` so queued requests can name it (workers must import the module)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _operations[name] = fn
        fn.operation_name = name  # type: ignore[attr-defined]
        return fn

    return register


def _operation_name(operation_func: Any) -> str:
    name = (
        operation_func if isinstance(operation_func, str) else getattr(operation_func, "operation_name", None)
    )
    if name is None and getattr(operation_func, "__name__", "") == "generate":
        name = GENERATE  # the seed's llm_client.generate
    if name != GENERATE and name not in _operations:
        raise JobValidationError(
            "operation_func",
            f"{operation_func!r} is not a registered operation; register it with @operation('name') "
            f"(known: {', '.join([GENERATE, *sorted(_operations)])})",
        )
    return str(name)


@dataclass
class RetryableRequest:
    """A named operation, JSON arguments and how often to retry it."""

    operation_func: Any
    args: list[Any] = field(default_factory=list)
    max_retries: int = 3
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.operation = _operation_name(self.operation_func)
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise JobValidationError(
                "max_retries", f"expected a non-negative integer, got {self.max_retries!r}"
            )
        try:
            json.dumps([self.args, self.kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise JobValidationError("args", f"must be JSON-serializable ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "max_retries": self.max_retries,
        }


def _priority(priority: int | str) -> str:
    """The seed passes integers: 0 is default, above 0 high, below 0 low; names work too."""
    if isinstance(priority, str):
        if priority not in PRIORITY_QUEUES:
            raise JobValidationError(
                "priority", f"expected one of {', '.join(PRIORITY_QUEUES)}, got {priority!r}"
            )
        return priority
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise JobValidationError("priority", f"expected an integer or a name, got {priority!r}")
    return "high" if priority > 0 else "low" if priority < 0 else "default"


class PersistentRequestQueue:
    def __init__(self, storage_path: str | os.PathLike[str] | None = None, max_size: int = 1000) -> None:
        self.storage_path = (
            Path(storage_path) if storage_path else get_settings().effective_queue_storage_path
        )
        self.max_size = max_size
        self._lock = threading.Lock()

    async def enqueue(self, request: RetryableRequest, priority: int | str = 0) -> str:
        """Publish the request onto the prioritized queues; returns its id (a job id for llm.generate)."""
        return await asyncio.to_thread(self.enqueue_sync, request, priority)

    def enqueue_sync(self, request: RetryableRequest, priority: int | str = 0) -> str:
        level = _priority(priority)
        try:
            return self._send(request.to_dict(), level)
        except DependencyUnavailableError as exc:
            return self._spool(request.to_dict(), level, exc)

    def _send(self, entry: dict[str, Any], level: str, request_id: str | None = None) -> str:
        if entry["operation"] == GENERATE:
            from ultra_tasks.jobs.submit import submit

            args, kwargs = entry["args"], dict(entry["kwargs"])
            prompt = args[0] if args else kwargs.pop("prompt", None)
            model = args[1] if len(args) > 1 else kwargs.pop("model", None)
            # a replayed spool entry keeps the id it was handed out under, and cannot be submitted twice
            return submit(
                prompt, model=model, priority=level, job_id=request_id, idempotency_key=request_id, **kwargs
            ).id
        queue = PRIORITY_QUEUES[level]
        task_id = request_id or str(uuid.uuid4())
        try:
            app.send_task(OPERATION_TASK, args=[entry], task_id=task_id, **publish_options(queue))
        except Exception as exc:  # kombu/redis errors: the broker is unreachable
            raise DependencyUnavailableError("broker", str(exc)) from exc
        return task_id

    def _spool(self, entry: dict[str, Any], level: str, reason: Exception) -> str:
        request_id = str(uuid.uuid4())
        with self._lock:
            if self.pending() >= self.max_size:
                raise QueueFullError(self.max_size, self.max_size) from reason
            self.storage_path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"id": request_id, "priority": level, "request": entry}) + "\n"
            with open(self.storage_path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        log.warning("request %s spooled to %s (%s)", request_id, self.storage_path, reason)
        return request_id

    def pending(self) -> int:
        """Requests waiting in the local spool."""
        try:
            with open(self.storage_path, encoding="utf-8") as fh:
                return sum(1 for line in fh if line.strip())
        except FileNotFoundError:
            return 0

    async def process_queue(self) -> int:
        """Replay the local spool (the seed's name); returns how many requests were sent."""
        return await asyncio.to_thread(self.replay)

    def replay(self) -> int:
        """Send what the spool holds; keep, in order, what still cannot be sent. Unreadable lines are
        kept aside in ``<spool>.bad`` rather than dropped."""
        with self._lock:
            try:
                lines = self.storage_path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return 0
            sent, keep, bad = 0, [], []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    entry, level, request_id = item["request"], item["priority"], item["id"]
                except (ValueError, KeyError, TypeError):
                    bad.append(line)
                    continue
                try:
                    # the spool id doubles as idempotency key: a replay cut short cannot submit twice
                    self._send(entry, level, request_id)
                    sent += 1
                except DependencyUnavailableError:
                    keep.append(line)
            if bad:
                with open(self.storage_path.with_suffix(self.storage_path.suffix + ".bad"), "a") as fh:
                    fh.write("\n".join(bad) + "\n")
            tmp = self.storage_path.with_suffix(self.storage_path.suffix + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, self.storage_path)  # atomic: the spool is never half-written
        return sent


OPERATION_TASK = "ultra.run_operation"


@operation("ultra.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A built-in operation that returns its arguments: a smoke test for the queue."""
    return {"args": list(args), "kwargs": kwargs}


@app.task(name=OPERATION_TASK, bind=True, max_retries=None)
def run_operation(self: Any, entry: dict[str, Any]) -> Any:
    """Run a registered operation with its JSON arguments; retry on error up to its ``max_retries``."""
    fn = _operations.get(entry["operation"])
    if fn is None:
        raise LookupError(f"operation {entry['operation']!r} is not registered in this worker")
    try:
        result = fn(*entry["args"], **entry["kwargs"])
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return result
    except Exception as exc:
        if self.request.retries >= int(entry.get("max_retries", 0)):
            raise
        settings = get_settings()
        backoff = settings.retry_initial_delay * settings.retry_backoff_factor**self.request.retries
        delay = min(settings.retry_max_delay, backoff)
        raise self.retry(exc=exc, countdown=delay) from exc


async def _await(awaitable: Any) -> Any:
    return await awaitable
