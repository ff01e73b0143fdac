"""``PersistentRequestQueue`` and ``RetryableRequest``, the request-queue API, on top of the Celery queues.

A ``RetryableRequest`` names a registered operation and carries JSON arguments: nothing is pickled, so a
tampered queue entry can never run code. ``llm.generate`` (an ``llm_client.generate(prompt, model)``
call) becomes an ordinary job (``submit``); any other operation registered with ``@operation("name")``
runs as a Celery task on the same prioritized queues, retried up to ``max_retries`` times.

``storage_path`` is the producer's local spool, in JSON lines: a request that can be neither recorded nor
published (database and broker unreachable) is appended there and replayed by ``process_queue()`` later.
Every request gets its id before the first try and keeps it in the spool, and both the job table and the
operation task drop a second request with the same id, so a replay, cut short or repeated, never makes a
second job. Many processes may share one spool: appends take a file lock; a replay takes the whole file
away under that lock (appends meanwhile start a new one), works on its own copy under a lock of its own,
and hands back what it could not send; a copy whose replayer died is taken up by the next replay. A line
that is not JSON is set aside in ``<spool>.bad``; one the system refuses (validation, a full queue) in
``<spool>.rejected`` with why; the rest go on. The spool holds at most ``max_size`` requests, shed by
priority with the shares of QUEUE_SHED_AT (a low request is refused first), and an ``llm.generate``
request is a job admitted under QUEUE_MAX_SIZE like any other submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import Ignore

from ultra_tasks import keys
from ultra_tasks.broker import publish_options
from ultra_tasks.celery_app import app
from ultra_tasks.config import get_settings
from ultra_tasks.errors import DependencyUnavailableError, JobValidationError, QueueFullError
from ultra_tasks.jobs.admission import threshold
from ultra_tasks.keys import PRIORITY_QUEUES
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis
from ultra_tasks.signing import sign, verify

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
        name = GENERATE  # an llm_client.generate function, as the request-queue API's users pass it
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
    """Integers as the request-queue API takes them: 0 is default, above 0 high, below 0 low; names work
    too."""
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

    async def enqueue(self, request: RetryableRequest, priority: int | str = 0) -> str:
        """Publish the request onto the prioritized queues; returns its id (a job id for llm.generate)."""
        return await asyncio.to_thread(self.enqueue_sync, request, priority)

    def enqueue_sync(self, request: RetryableRequest, priority: int | str = 0) -> str:
        level = _priority(priority)
        request_id = str(uuid.uuid4())
        try:
            return self._send(request.to_dict(), level, request_id)
        except DependencyUnavailableError as exc:
            return self._spool(request.to_dict(), level, request_id, exc)

    def _send(self, entry: dict[str, Any], level: str, request_id: str) -> str:
        if entry["operation"] == GENERATE:
            from ultra_tasks.jobs.submit import submit

            args, kwargs = entry["args"], dict(entry["kwargs"])
            prompt = args[0] if args else kwargs.pop("prompt", None)
            model = args[1] if len(args) > 1 else kwargs.pop("model", None)
            # the request's id is the job's: a second submit of it returns the first job
            return submit(prompt, model=model, priority=level, job_id=request_id, **kwargs).id
        queue = PRIORITY_QUEUES[level]
        try:
            app.send_task(
                OPERATION_TASK,
                args=[entry],
                kwargs={"sig": sign("operation", request_id, entry)},
                task_id=request_id,
                **publish_options(queue),
            )
        except Exception as exc:  # kombu/redis errors: the broker is unreachable
            raise DependencyUnavailableError("broker", str(exc)) from exc
        return request_id

    # --- the spool -----------------------------------------------------------------------------------
    def _path(self, suffix: str) -> Path:
        return self.storage_path.with_name(self.storage_path.name + suffix)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        """The spool's lock, across processes (the lock file stays; the spool itself is swapped)."""
        self.storage_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._path(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _spool(self, entry: dict[str, Any], level: str, request_id: str, reason: Exception) -> str:
        line = json.dumps({"id": request_id, "priority": level, "request": entry}) + "\n"
        # the spool sheds by priority as the job bound does: its own bound is ``max_size``, under the lock
        limit = threshold(level, self.max_size)
        with self._locked():
            pending = self.pending()
            if pending >= limit.limit:
                raise limit.refusal(pending, setting="PersistentRequestQueue max_size") from reason
            _append(self.storage_path, [line])
        log.warning("request %s spooled to %s (%s)", request_id, self.storage_path, reason)
        return request_id

    def pending(self) -> int:
        """Requests waiting in the local spool (those a replay is working on included)."""
        return sum(_count_lines(p) for p in [self.storage_path, *self._replaying()])

    def _replaying(self) -> list[Path]:
        return sorted(self.storage_path.parent.glob(self.storage_path.name + ".replaying-*"))

    async def process_queue(self) -> int:
        """Replay the local spool (the request-queue API's name); returns how many requests were sent."""
        return await asyncio.to_thread(self.replay)

    def replay(self) -> int:
        """Send what the spool holds; hand back, in order, what still cannot be sent."""
        with self._locked():
            mine: list[Path] = []
            if self.storage_path.exists():
                claimed = self._path(f".replaying-{uuid.uuid4().hex}")
                os.replace(self.storage_path, claimed)
                mine.append(claimed)
            mine.extend(p for p in self._replaying() if p not in mine)
        sent = 0
        for path in mine:
            sent += self._replay_file(path)
        return sent

    def _replay_file(self, path: Path) -> int:
        try:
            fh = open(path, encoding="utf-8")  # noqa: SIM115 - held open for its lock
        except FileNotFoundError:
            return 0  # another replay finished it
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a live replay works on it
            if not path.exists():
                return 0
            sent = 0
            keep: list[str] = []
            bad: list[str] = []
            rejected: list[str] = []
            for line in fh.read().splitlines():
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    entry, level, request_id = item["request"], item["priority"], item["id"]
                except (ValueError, KeyError, TypeError):
                    bad.append(line + "\n")
                    continue
                if keep:  # the broker or database is down: keep the rest in order without trying
                    keep.append(line + "\n")
                    continue
                try:
                    self._send(entry, level, request_id)
                    sent += 1
                except DependencyUnavailableError:
                    keep.append(line + "\n")
                except (JobValidationError, QueueFullError) as exc:
                    rejected.append(json.dumps({**item, "rejected": str(exc)}) + "\n")
            with self._locked():
                _append(self.storage_path, keep)
                _append(self._path(".bad"), bad)
                _append(self._path(".rejected"), rejected)
                path.unlink()
        if rejected:
            log.warning("%d spooled requests refused; kept in %s", len(rejected), self._path(".rejected"))
        return sent


def _append(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(lines))
        fh.flush()
        os.fsync(fh.fileno())


def _count_lines(path: Path) -> int:
    try:
        with open(path, encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


OPERATION_TASK = "ultra.run_operation"
#: seconds an operation that ran is remembered, so a copy sent again (a spool replayed twice) does nothing
OPERATION_DONE_TTL_S = 7 * 24 * 3600


@operation("ultra.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A built-in operation that returns its arguments: a smoke test for the queue."""
    return {"args": list(args), "kwargs": kwargs}


@app.task(name=OPERATION_TASK, bind=True, max_retries=None)
def run_operation(self: Any, entry: dict[str, Any], sig: str | None = None) -> Any:
    """Run a registered operation with its JSON arguments; retry on error up to its ``max_retries``.
    Only a message signed by a producer that shares this worker's key runs (signing.py)."""
    if not verify("operation", str(self.request.id), entry, sig):
        from ultra_tasks.jobs.tasks import refuse_unsigned

        refuse_unsigned("operation", str(self.request.id))
    fn = _operations.get(entry["operation"])
    if fn is None:
        raise LookupError(f"operation {entry['operation']!r} is not registered in this worker")
    done_key = keys.operation_done(str(self.request.id))
    client = shared_redis()
    with contextlib.suppress(*REDIS_DOWN):
        if client.exists(done_key):  # a replayed spool line sent again: the operation already ran
            log.info("operation %s already ran; this copy does nothing", self.request.id)
            raise Ignore()
    try:
        result = fn(*entry["args"], **entry["kwargs"])
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        with contextlib.suppress(*REDIS_DOWN):
            client.set(done_key, "1", ex=OPERATION_DONE_TTL_S)
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
