"""Job-record writes that survive a database outage: applied at once, or buffered in Redis and applied in
order when the database answers again.

Workers keep running jobs while PostgreSQL is down (the message carries the request; the mode is read from
Redis); what they would have written to the job table goes to one Redis list (``keys.record_buffer()``)
as JSON ``{"op", "job_id", "args", "at", "seq"}``, with the time it happened, so the recorded timings are
the real ones. A write that ends a job also keeps the job's outcome readable in Redis until it lands
(outcome_buffer.py): the job's row is its result, and the result backend holds nothing. A flusher (a
thread in every worker, and the sweeper on beat) moves entries out one at a time under a lock it renews;
an entry whose write fails because the database went away again goes back to the head of the list.

Every write is idempotent, so order and repetition cannot corrupt a row: each carries its run's fencing
token (a write applies only while the row has seen no newer run: jobs/lease.py) and the job's calls as an
absolute count. A flusher whose lock lapsed mid-flush and a second flusher that took over may both apply
an entry; the row ends the same. A write the database refuses for a reason other than an outage (a value
too long for its column, a constraint) is not dropped: an outcome is recorded as failed with what
happened, so no job is left "running" to be swept and re-run. With Redis down as well there is nowhere to
keep the write: it raises ``DependencyUnavailableError`` and the task retries the run.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from ultra_tasks import keys
from ultra_tasks.billing import ledger
from ultra_tasks.clock import utcnow
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import outcome_buffer, records
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds one flusher holds the flush lock; it renews it every FLUSH_RENEW_S while it works
FLUSH_LOCK_S = 30
FLUSH_RENEW_S = FLUSH_LOCK_S / 3

_APPLY: dict[str, Callable[..., bool | None]] = {
    "started": records.mark_started,
    "succeeded": records.mark_succeeded,
    "failed": records.mark_failed,
    "parked": records.mark_parked,
    "expired": records.mark_expired,
    "released": lambda job_id, at=None: records.mark_released(job_id),
    # provider calls of a run whose outcome write did not carry them (billing/ledger.py)
    "ledger": lambda job_id, at=None, entries=(): ledger.apply_buffered(job_id, list(entries), at),
}
#: writes that end a run: one the database refuses becomes a failed outcome
_OUTCOMES = ("succeeded", "failed", "parked", "expired")

# KEYS[1] lock; ARGV: token, ttl s. Extends the lock only for its holder: 1, else 0.
_RENEW_LOCK_LUA = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def apply(op: str, job_id: str, at: datetime, args: dict[str, Any]) -> bool | None:
    """Apply one write now. ``DependencyUnavailableError`` if the database is unreachable; any other
    refusal of an outcome write records the job failed instead (``internal``: the outcome could not be
    recorded), so the job ends rather than being swept and run again."""
    try:
        return _APPLY[op](job_id, at=at, **args)
    except DependencyUnavailableError:
        raise
    except (SQLAlchemyError, TypeError, ValueError) as exc:
        if op not in _OUTCOMES:
            raise
        log.exception("job %s: the %s write was refused; recording the job failed instead", job_id, op)
        error = {
            "type": type(exc).__name__,
            "kind": "internal",
            "message": f"the job's {op} outcome could not be recorded: {str(exc)[:1000]}",
        }
        fenced = {k: v for k, v in args.items() if k in ("token", "attempts", "ledger")}
        return records.mark_failed(job_id, error, at=at, **fenced)


class RecordWriter:
    """Writes job records through the buffer when the database cannot take them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._renew_lock = client.register_script(_RENEW_LOCK_LUA)

    def write(self, op: str, job_id: str, **args: Any) -> bool | None:
        """Apply ``op`` now and return what the write returned (False: the row refused it, a newer run
        holds the job); None if buffered (the database is unreachable)."""
        at = args.pop("at", None) or utcnow()
        try:
            return apply(op, job_id, at, args)
        except DependencyUnavailableError as exc:
            self.buffer(op, job_id, at, **args)
            log.warning("job %s: %s kept in the write buffer (%s)", job_id, op, exc)
            return None

    def buffer(self, op: str, job_id: str, at: datetime, **args: Any) -> None:
        """Keep the write for later; a write that ends the job also keeps its outcome readable
        (outcome_buffer.py), in the same transaction, until the write lands."""
        outcome = outcome_buffer.outcome_of(op, job_id, args)
        try:
            seq = int(self.client.incr(keys.record_buffer_seq()))
            entry = json.dumps({"op": op, "job_id": job_id, "args": args, "at": at.isoformat(), "seq": seq})
            pipe = self.client.pipeline(transaction=outcome is not None)
            pipe.rpush(keys.record_buffer(), entry)
            if outcome is not None:
                outcome_buffer.keep(pipe, job_id, outcome)
            pipe.execute()
        except REDIS_DOWN as exc:
            raise DependencyUnavailableError("redis", f"job record write buffer: {exc}") from exc

    def depth(self) -> int:
        return int(self.client.llen(keys.record_buffer()))

    def flush(self, limit: int = 10_000) -> int:
        """Apply buffered writes in order; returns how many were applied. Stops at the first write the
        database refuses (it is still down) and leaves that one first in line, and stops when its lock was
        lost (another flusher goes on from where this one was)."""
        token = uuid.uuid4().hex
        lock = keys.record_buffer_lock()
        if not self.client.set(lock, token, nx=True, ex=FLUSH_LOCK_S):
            return 0  # another flusher is at it
        applied = 0
        renewed = time.monotonic()
        try:
            # an entry a flusher took and then died holding goes back to the head of the line
            while self.client.lmove(keys.record_buffer_inflight(), keys.record_buffer(), "RIGHT", "LEFT"):
                pass
            while applied < limit:
                if time.monotonic() - renewed >= FLUSH_RENEW_S:
                    if not self._renew_lock(keys=[lock], args=[token, FLUSH_LOCK_S]):
                        log.warning("record buffer flush lock lost; another flusher goes on")
                        break
                    renewed = time.monotonic()
                moved = self.client.lmove(
                    keys.record_buffer(), keys.record_buffer_inflight(), "LEFT", "RIGHT"
                )
                if moved is None:
                    break
                raw = str(moved)
                entry = None
                try:
                    entry = json.loads(raw)
                    apply(entry["op"], entry["job_id"], datetime.fromisoformat(entry["at"]), entry["args"])
                except DependencyUnavailableError:
                    self.client.lmove(keys.record_buffer_inflight(), keys.record_buffer(), "RIGHT", "LEFT")
                    break
                except Exception:
                    # a write that can never apply (a bug, a job deleted meanwhile) must not block the rest
                    log.exception("dropping unappliable buffered write %s", raw[:500])
                pipe = self.client.pipeline(transaction=False)
                pipe.lrem(keys.record_buffer_inflight(), 1, raw)
                if isinstance(entry, dict) and entry.get("op") in outcome_buffer.FINAL_OPS:
                    # the row answers now: the outcome kept for the outage is no longer needed
                    outcome_buffer.forget(pipe, str(entry.get("job_id")))
                pipe.execute()
                applied += 1
        finally:
            self._release(lock, token)
        if applied:
            log.warning("applied %d job-record writes buffered while the database was down", applied)
        return applied

    def _release(self, lock: str, token: str) -> None:
        try:
            if self.client.get(lock) == token:
                self.client.delete(lock)
        except REDIS_DOWN:
            pass  # it expires by itself


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
