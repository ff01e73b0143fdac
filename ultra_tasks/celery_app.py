"""The Celery application. ``celery -A ultra_tasks worker|beat|flower`` finds it as ``ultra_tasks.app``."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import celery.app.trace
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from ultra_tasks.celery_compat import tolerate_collected_broker_connection

log = logging.getLogger(__name__)

# Job results hold prompts' answers: log that a task succeeded and how long it took, not what it returned.
celery.app.trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"

tolerate_collected_broker_connection()

app = Celery(
    "ultra_tasks",
    include=[
        "ultra_tasks.jobs.tasks",
        "ultra_tasks.jobs.queue",
        "ultra_tasks.health.tasks",
        "ultra_tasks.api.tasks",
    ],
)
app.config_from_object("celeryconfig")
import ultra_tasks.metrics.jobs  # noqa: E402, F401 - connects the fleet job-metrics signal handlers


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: Any = None, **_: Any) -> None:
    # Workers and beat log what providers, SDKs and drivers say: an error quoting a URL with its password
    # or a key must not reach the log in clear (redaction.py masks both).
    from ultra_tasks.redaction import install_log_redaction

    install_log_redaction(logger)


@worker_init.connect
def _prepare_worker(sender: Any = None, **_: Any) -> None:
    # A worker must not take jobs before the schema it writes to exists.
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.providers.registry import default_registry
    from ultra_tasks.runtime import runtime

    upgrade_schema()
    # The SDKs cost 1 to 2.5 s of CPU to import. Imported by the first job instead, every job the pool
    # took meanwhile waited on the import lock already claimed (at 200 threads, a whole first wave).
    from ultra_tasks.providers.kinds import sdk_modules

    for sdk_provider in sdk_modules():  # every registered kind's
        importlib.import_module(sdk_provider)

    # one line per HTTP request to a provider is noise at INFO; errors still surface through our logs
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        default_registry().pool_size = concurrency
    # the process's parts, made before the pool takes its first job rather than by it
    rt = runtime()
    rt.caller, rt.effects, rt.leases, rt.cache  # noqa: B018 - each made on first use


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connection pools must not be shared across fork (prefork pool only; threads share one process).
    from ultra_tasks.db.engine import dispose_engines
    from ultra_tasks.runtime import reset_runtime

    dispose_engines()
    reset_runtime()  # its cache's disk level and its pools are the parent's: the child makes its own


_threads: list[Any] = []


@worker_ready.connect
def _start_worker_threads(sender: Any = None, **_: Any) -> None:
    # Every worker renews the leases of the jobs it runs (so a job whose worker died runs elsewhere once
    # its lease lapses, and never while it lives), releases parked jobs that are due (any number may:
    # each job is claimed by one releaser) and applies job-record writes buffered while the database was
    # down (one flusher at a time, under a lock).
    from ultra_tasks.jobs.liveness import Heartbeat, consumed_logical_queues, identity
    from ultra_tasks.jobs.parking import Releaser
    from ultra_tasks.jobs.record_buffer import BufferFlusher
    from ultra_tasks.jobs.submit import publish_released
    from ultra_tasks.runtime import runtime

    rt = runtime()  # the one the pool's first jobs may already use: its leases are the ones to renew
    settings, client = rt.settings, rt.redis
    # the queues this worker was started on (-Q): its alive key says them, for `ultra submit` to tell a
    # user when no live worker consumes a job's queue
    consumed = list((getattr(sender, "app", None) or app).amqp.queues.consume_from or {})
    heartbeat = Heartbeat(
        client,
        identity(getattr(sender, "hostname", None)),
        rt.leases,
        queues=consumed_logical_queues(consumed),
        seen_interval_s=settings.worker_heartbeat_interval,
    )
    heartbeat.beat()
    _threads.extend(
        [
            heartbeat,
            Releaser(
                client,
                publish_released,
                settings.park_release_poll,
                ramp_first=settings.park_ramp_first,
                ramp_interval_s=settings.park_ramp_interval,
                probes=settings.circuit_breaker_half_open_max_calls,
            ),
            BufferFlusher(client),
        ]
    )
    for thread in _threads:
        thread.start()


@worker_shutdown.connect
def _stop_worker_threads(**_: Any) -> None:
    for thread in _threads:
        thread.stop()
