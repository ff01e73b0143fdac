"""Beat-driven operational tasks (queue ``ops``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from sqlalchemy import text

from ultra_tasks import keys
from ultra_tasks.celery_app import app
from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.db.engine import get_engine

log = logging.getLogger(__name__)

#: per-check bound (seconds): a hung dependency must not hang the beat queue
CHECK_TIMEOUT_S = 5.0


def _timed(fn: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        fn()
        status, message = "ok", "reachable"
    except Exception as exc:
        status, message = "critical", f"{type(exc).__name__}: {exc}"
    return {
        "status": status,
        "message": message,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "checked_at": utcnow().isoformat(),
    }


@app.task(name="ultra.ops.health_check", ignore_result=True)
def health_check() -> dict[str, dict[str, Any]]:
    """Check Redis and the database; publish the verdicts in Redis for the status page and CLI."""
    settings = get_settings()
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )

    def check_db() -> None:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))

    verdicts = {"redis": _timed(client.ping), "database": _timed(check_db)}
    try:
        client.hset(keys.health_last(), mapping={k: json.dumps(v) for k, v in verdicts.items()})
    except redis.RedisError as exc:
        log.warning("could not publish health verdicts: %s", exc)
    finally:
        client.close()
    return verdicts
