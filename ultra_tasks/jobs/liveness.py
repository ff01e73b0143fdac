"""A worker process's heartbeat: it renews the leases of the jobs the process runs, and says it is alive.

A run holds its job under a lease (jobs/lease.py) that lapses unless renewed; this thread renews every
lease of its process each third of JOB_LEASE_TTL, however long the runs take, so a job is run elsewhere
only when the process holding it stopped renewing (killed, frozen, cut off). The alive key is for
operators (``ultra status``, Flower lists Celery's own view); nothing decides a takeover from it.

The heartbeat survives every error: a Redis that refuses writes (out of memory, read-only after a
failover, unable to persist) or a database that is down is logged once per outage and counted, and the
next beat tries again. A process whose leases go unrenewed for half their lifetime takes no new job
(``Leases.accepting``) rather than start runs it could not hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from prometheus_client import Counter

from ultra_tasks import keys
from ultra_tasks.jobs import reaper
from ultra_tasks.jobs.lease import Leases
from ultra_tasks.redis_client import REDIS_DOWN

log = logging.getLogger(__name__)

#: seconds a worker's alive key outlives its last refresh
ALIVE_TTL_S = 15

HEARTBEAT_FAILURES = Counter(
    "ultra_worker_heartbeat_failures_total",
    "Heartbeats of this worker process that could not renew its leases or alive key, by error type",
    ["error"],
)


def identity(hostname: str | None) -> str:
    """This process's identity as a job holder."""
    return f"{hostname or 'unknown'}/{os.getpid()}"


class Heartbeat(threading.Thread):
    def __init__(
        self,
        client: redis.Redis,
        holder: str,
        leases: Leases | None = None,
        *,
        interval_s: float | None = None,
        alive: Callable[[], None] | None = None,
        queues: tuple[str, ...] = (),
        seen_interval_s: float | None = None,
    ) -> None:
        super().__init__(name="worker-heartbeat", daemon=True)
        self.client, self.holder, self.leases = client, holder, leases
        self.interval_s = interval_s or (leases.ttl_s / 3 if leases is not None else ALIVE_TTL_S / 3)
        #: liveness beats (jobs/reaper.py) come this often, lease renewals every ``interval_s``
        self.seen_interval_s = min(self.interval_s, seen_interval_s or self.interval_s)
        self._alive = alive or self._write_alive
        #: the queues this process consumes, written in its alive key (``live_consumers`` reads them)
        self._alive_value = json.dumps({"queues": list(queues)})
        self._stop_event = threading.Event()
        #: the error of the outage in progress (logged once), None while beats succeed
        self.failing: str | None = None

    def _write_alive(self) -> None:
        self.client.set(keys.worker_alive(self.holder), self._alive_value, ex=ALIVE_TTL_S)

    def beat(self) -> None:
        """Renew this process's leases and its alive key, and beat; never raises."""
        try:
            if self.leases is not None:
                self.leases.renew_all()
            self._alive()
            reaper.beat(self.client, self.holder)
        except Exception as exc:  # the heartbeat must outlive any error
            self._failed(exc)
            return
        if self.failing is not None:
            log.warning("worker heartbeat recovered (it had failed with %s)", self.failing)
            self.failing = None

    def _failed(self, exc: Exception) -> None:
        HEARTBEAT_FAILURES.labels(type(exc).__name__).inc()
        if self.failing is None:
            log.warning("worker heartbeat failed (%s: %s); it keeps trying", type(exc).__name__, exc)
        self.failing = type(exc).__name__

    def run(self) -> None:
        renew_at = 0.0
        while not self._stop_event.is_set():
            if time.monotonic() >= renew_at:
                self.beat()
                renew_at = time.monotonic() + self.interval_s
            else:
                self.seen()
            self._stop_event.wait(self.seen_interval_s)

    def seen(self) -> None:
        """A liveness beat alone (between renewals); never raises."""
        try:
            reaper.beat(self.client, self.holder)
        except Exception as exc:  # the heartbeat must outlive any error
            self._failed(exc)

    def stop(self) -> None:
        """A clean shutdown says so at once (its unfinished jobs are redelivered)."""
        self._stop_event.set()
        if self.leases is not None:
            self.leases.flush_releases()
        with contextlib.suppress(*REDIS_DOWN):
            self.client.delete(keys.worker_alive(self.holder))
            reaper.forget(self.client, self.holder)


def consumed_logical_queues(names: list[str]) -> tuple[str, ...]:
    """The logical queues behind the broker queues a worker consumes (on RabbitMQ one queue, ``llm``,
    carries the three LLM levels)."""
    from ultra_tasks.broker import AMQP_LLM_QUEUE

    out: list[str] = []
    for name in names:
        for logical in keys.LLM_QUEUES if name == AMQP_LLM_QUEUE else (name,):
            if logical not in out:
                out.append(logical)
    return tuple(out)


def live_consumers(client: redis.Redis) -> dict[str, tuple[str, ...] | None]:
    """Every live worker process (alive key present) and the queues it consumes (None when its key does
    not say). A SCAN of the alive keys and one GET each: for operators' tools, not the job path."""
    names = list(client.scan_iter(match=keys.worker_alive_pattern(), count=500))
    if not names:
        return {}
    values = client.mget(names)
    prefix = keys.worker_alive("")
    out: dict[str, tuple[str, ...] | None] = {}
    for name, value in zip(names, values, strict=True):
        key = name.decode() if isinstance(name, bytes) else str(name)
        if value is None:  # expired between SCAN and MGET
            continue
        try:
            queues = json.loads(value)["queues"]
            out[key.removeprefix(prefix)] = tuple(str(q) for q in queues)
        except (ValueError, KeyError, TypeError):
            out[key.removeprefix(prefix)] = None
    return out
