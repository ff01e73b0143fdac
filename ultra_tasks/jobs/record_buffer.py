"""Job-record writes that survive a database outage: applied at once, or buffered in Redis and applied in
order when the database answers again.

Workers keep running jobs while PostgreSQL is down (the message carries the request; the mode is read from
Redis); what they would have written to the job table goes to one Redis list (``keys.record_buffer()``)
as JSON ``{"op", "job_id", "args", "at"}``, with the time it happened, so the recorded timings are the
real ones. A flusher (a thread in every worker, and the sweeper on beat) moves entries out one at a time
under a lock, so they are applied once and in order; an entry whose write fails because the database
went away again goes back to the head of the list.

Each buffered write is safe to apply late: ``started`` only takes a job that is still waiting, and the
outcomes (succeeded, failed, parked, expired) are the last word on a run. With Redis down as well there
is nowhere to keep the write: it raises ``DependencyUnavailableError`` and the task retries the run.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import records
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds one flusher holds the flush lock (it renews it while it works)
FLUSH_LOCK_S = 30

_APPLY: dict[str, Callable[..., None]] = {
    "started": records.mark_started,
    "succeeded": records.mark_succeeded,
    "failed": records.mark_failed,
    "parked": records.mark_parked,
    "expired": records.mark_expired,
    "released": lambda job_id, at=None: records.mark_released(job_id),
}


class RecordWriter:
    """Writes job records through the buffer when the database cannot take them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def write(self, op: str, job_id: str, **args: Any) -> bool:
        """Apply ``op`` now; True if applied, False if buffered (the database is unreachable)."""
        at = args.pop("at", None) or utcnow()
        try:
            _APPLY[op](job_id, at=at, **args)
            return True
        except DependencyUnavailableError as exc:
            self.buffer(op, job_id, at, **args)
            log.warning("job %s: %s kept in the write buffer (%s)", job_id, op, exc)
            return False

    def buffer(self, op: str, job_id: str, at: datetime, **args: Any) -> None:
        entry = json.dumps({"op": op, "job_id": job_id, "args": args, "at": at.isoformat()})
        try:
            self.client.rpush(keys.record_buffer(), entry)
        except REDIS_DOWN as exc:
            raise DependencyUnavailableError("redis", f"job record write buffer: {exc}") from exc

    def depth(self) -> int:
        return int(self.client.llen(keys.record_buffer()))

    def flush(self, limit: int = 10_000) -> int:
        """Apply buffered writes in order; returns how many were applied. Stops at the first write the
        database refuses (it is still down) and leaves that one first in line."""
        token = uuid.uuid4().hex
        lock = keys.record_buffer_lock()
        if not self.client.set(lock, token, nx=True, ex=FLUSH_LOCK_S):
            return 0  # another flusher is at it
        applied = 0
        try:
            # an entry a flusher took and then died holding goes back to the head of the line
            while self.client.lmove(keys.record_buffer_inflight(), keys.record_buffer(), "RIGHT", "LEFT"):
                pass
            while applied < limit:
                moved = self.client.lmove(
                    keys.record_buffer(), keys.record_buffer_inflight(), "LEFT", "RIGHT"
                )
                if moved is None:
                    break
                raw = str(moved)
                entry = json.loads(raw)
                try:
                    _APPLY[entry["op"]](
                        entry["job_id"], at=datetime.fromisoformat(entry["at"]), **entry["args"]
                    )
                except DependencyUnavailableError:
                    self.client.lmove(keys.record_buffer_inflight(), keys.record_buffer(), "RIGHT", "LEFT")
                    break
                except Exception:
                    # a write that can never apply (a bug, a job deleted meanwhile) must not block the rest
                    log.exception("dropping unappliable buffered write %s", raw[:500])
                self.client.lrem(keys.record_buffer_inflight(), 1, raw)
                applied += 1
                if applied % 200 == 0:
                    self.client.expire(lock, FLUSH_LOCK_S)
        finally:
            if self.client.get(lock) == token:
                self.client.delete(lock)
        if applied:
            log.warning("applied %d job-record writes buffered while the database was down", applied)
        return applied


class BufferFlusher(threading.Thread):
    """Flushes the write buffer every ``interval_s`` while it holds anything."""

    def __init__(self, client: redis.Redis, interval_s: float = 2.0) -> None:
        super().__init__(name="record-buffer-flusher", daemon=True)
        self.writer = RecordWriter(client)
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                if self.writer.depth():
                    self.writer.flush()
            except REDIS_DOWN:
                pass  # nothing can be buffered or flushed now; the next round tries again
            except Exception:
                log.exception("record buffer flush failed")

    def stop(self) -> None:
        self._stop_event.set()
