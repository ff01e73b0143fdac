"""Which worker processes are alive, so a job claimed by one that died is taken over at once.

A run claims its job in the table under the worker's identity (node name and pid: a worker restarted
under the same node name is a different process). Each worker process keeps a key with a short expiry
in Redis; when a redelivered job finds its claim held by an identity whose key has expired, the holder
was killed (kill -9, OOM, lost machine) and the claim is taken over, instead of waiting for the claim to
go stale (JOB_TIME_LIMIT + 60 s). When Redis cannot say, the holder is taken to be alive: a late run is
better than a double one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import redis

from ultra_tasks import keys
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds a worker's key outlives its last refresh; refreshed every third of it
ALIVE_TTL_S = 15


def identity(hostname: str | None) -> str:
    """This process's identity as a job holder."""
    return f"{hostname or 'unknown'}/{os.getpid()}"


def is_dead(client: redis.Redis, holder: str) -> bool:
    """True only if Redis says ``holder`` has no live key."""
    try:
        return not client.exists(keys.worker_alive(holder))
    except REDIS_DOWN:
        return False


class Heartbeat(threading.Thread):
    def __init__(self, client: redis.Redis, holder: str, ttl_s: int = ALIVE_TTL_S) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.client, self.holder, self.ttl_s = client, holder, ttl_s
        self._stop_event = threading.Event()

    def beat(self) -> None:
        try:
            self.client.set(keys.worker_alive(self.holder), "1", ex=self.ttl_s)
        except REDIS_DOWN as exc:
            log.warning("worker heartbeat not written (Redis: %s)", exc)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.beat()
            self._stop_event.wait(self.ttl_s / 3)

    def stop(self) -> None:
        """A clean shutdown says so at once (its unfinished jobs are redelivered)."""
        self._stop_event.set()
        with contextlib.suppress(*REDIS_DOWN):
            self.client.delete(keys.worker_alive(self.holder))
