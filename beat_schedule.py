"""The Celery beat schedule: operational tasks on the ``ops`` queue, so they never wait behind LLM jobs.

Every entry is idempotent (running it twice does no harm) and expires after one interval, so a backlog of
stale checks is dropped rather than run late.
"""

from __future__ import annotations

from typing import Any

from ultra_tasks.config import Settings

#: seconds between two retention runs (each deletes at most jobs.retention.MAX_ROWS_PER_RUN rows)
RETENTION_INTERVAL_S = 600.0


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.health_check_interval
    return {
        "health-check": {
            "task": "ultra.ops.health_check",
            "schedule": interval,
            "options": {"queue": "ops", "expires": interval},
        },
        # publishes what the outbox holds and what died mid-run; idempotent, so two beats are harmless
        "sweep": {
            "task": "ultra.ops.sweep",
            "schedule": interval,
            "options": {"queue": "ops", "expires": interval},
        },
        # a worker that stopped beating (killed, its machine gone) has its running jobs sent elsewhere
        # within WORKER_DEAD_AFTER plus a third of it, not when their leases lapse; idempotent
        "reap": {
            "task": "ultra.ops.reap",
            "schedule": settings.worker_dead_after / 3,
            "options": {"queue": "ops", "expires": settings.worker_dead_after / 3},
        },
        # batches of the HTTP API whose lines all ended get their output and error files (api/batch_store.py)
        "finish-batches": {
            "task": "ultra.ops.finish_batches",
            "schedule": interval,
            "options": {"queue": "ops", "expires": interval},
        },
        # finished jobs older than JOB_RETENTION leave the job table in small batches (jobs/retention.py)
        "retention": {
            "task": "ultra.ops.retention",
            "schedule": RETENTION_INTERVAL_S,
            "options": {"queue": "ops", "expires": RETENTION_INTERVAL_S},
        },
    }
