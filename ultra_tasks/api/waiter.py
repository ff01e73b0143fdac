"""How an API request waits for its job: one subscriber thread per process, no polling per request.

Every final write of a job frees its admission slot with a script that also publishes the job's id on
``keys.jobs_finished()`` (jobs/admission.py ``release``). The waiter subscribes once; a request registers
its job id *before* the job is submitted, so no news can come before anyone listens. On news of a
registered job the waiter reads that job's row once and hands its outcome to the request's future.

What the news can miss (Redis restarting, a final write made while Redis was down) is caught by a sweep
every ``sweep_s`` seconds: one query for every registered job at once, and, for the jobs the database
cannot answer for, the outcome their worker keeps in Redis while the database is down
(jobs/outcome_buffer.py), as ``JobHandle.result`` reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from sqlalchemy import select

from ultra_tasks import keys
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import outcome_buffer
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.records import FINAL, jobs
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

log = logging.getLogger(__name__)

#: seconds between two sweeps of every registered job (the news missed)
SWEEP_S = 0.5
#: ids per sweep query
CHUNK = 500


def outcome_of_row(
    status: str, result: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """A final row as the outcome shape ``JobHandle`` and the outcome buffer use."""
    if status == JobStatus.SUCCEEDED.value and result:
        return dict(result)
    return {"status": status, "error": error or {}}


def final_outcomes(job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The outcome of each of ``job_ids`` that is final, from the job table (raises when it is down)."""
    ids = list(job_ids)
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), CHUNK):
        with transaction() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.result, jobs.c.error).where(
                    jobs.c.id.in_(ids[start : start + CHUNK]), jobs.c.status.in_(FINAL)
                )
            ).all()
        for r in rows:
            if r.status == JobStatus.SUCCEEDED.value and not r.result:
                continue  # not readable yet
            out[str(r.id)] = outcome_of_row(r.status, r.result, r.error)
    return out


class Registration:
    """One request's wait for one job."""

    def __init__(self, waiter: JobWaiter, job_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self.waiter = waiter
        self.job_id = job_id
        self.future = future

    async def wait(self, timeout: float) -> dict[str, Any] | None:
        """The job's final outcome, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.waiter._forget(self)


class JobWaiter:
    """Hands final outcomes to the requests that wait for them (start it once per process)."""

    def __init__(self, client: redis.Redis | None = None, sweep_s: float = SWEEP_S) -> None:
        self._client = client
        self.sweep_s = sweep_s
        self._pending: dict[str, list[Registration]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set while the subscription is live
        self.subscribed = threading.Event()

    # --- requests' side ---------------------------------------------------------------------------
    def register(self, job_id: str) -> Registration:
        loop = asyncio.get_running_loop()
        reg = Registration(self, job_id, loop.create_future())
        with self._lock:
            self._pending.setdefault(job_id, []).append(reg)
        return reg

    def _forget(self, reg: Registration) -> None:
        with self._lock:
            regs = self._pending.get(reg.job_id)
            if regs is not None:
                with contextlib.suppress(ValueError):
                    regs.remove(reg)
                if not regs:
                    del self._pending[reg.job_id]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # --- the thread -------------------------------------------------------------------------------
    def start(self, ready_timeout: float = 5.0) -> JobWaiter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ultra-api-waiter", daemon=True)
            self._thread.start()
            self.subscribed.wait(ready_timeout)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self._client or shared_redis()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.jobs_finished())
                self.subscribed.set()
                next_sweep = time.monotonic() + self.sweep_s
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        job_id = data.decode() if isinstance(data, bytes) else str(data)
                        with self._lock:
                            wanted = job_id in self._pending
                        if wanted:
                            self._settle([job_id])
                    if time.monotonic() >= next_sweep:
                        self._sweep()
                        next_sweep = time.monotonic() + self.sweep_s
            except REDIS_DOWN as exc:
                self.subscribed.clear()
                log.warning("API waiter: job news unavailable (Redis: %s); sweeping only", exc)
                self._sweep()
                self._stop.wait(self.sweep_s)
            except Exception:  # the waiter must outlive any one bad read
                log.exception("API waiter: unexpected error; resubscribing")
                self._stop.wait(self.sweep_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _sweep(self) -> None:
        with self._lock:
            ids = list(self._pending)
        if ids:
            self._settle(ids)

    def _settle(self, job_ids: list[str]) -> None:
        try:
            outcomes = final_outcomes(job_ids)
        except DependencyUnavailableError:
            outcomes = {}
            client = self._client or shared_redis()
            for job_id in job_ids:
                buffered = outcome_buffer.read(client, job_id)
                if buffered is not None:
                    outcomes[job_id] = buffered
        for job_id, outcome in outcomes.items():
            with self._lock:
                regs = list(self._pending.get(job_id, ()))
            for reg in regs:
                loop = reg.future.get_loop()
                with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, reg.future, outcome)


def _resolve(future: asyncio.Future[dict[str, Any]], outcome: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(outcome)
