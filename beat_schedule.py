"""The Celery beat schedule: operational tasks on the ``ops`` queue, so they never wait behind LLM jobs.

Every entry is idempotent (running it twice does no harm) and expires after one interval, so a backlog of
stale checks is dropped rather than run late.
"""

from __future__ import annotations

from typing import Any

from ultra_tasks.config import Settings


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
    }
