"""``fleet_snapshot()``: one JSON-safe picture of the fleet for `ultra status`, the status page and scripts.

Two stores are read, each in its own thread with its own deadline, and each degrades alone:

- Redis (the mode mirror, breakers, parked jobs, the admission bound's fill) and the broker (queue
  depths): unreachable → ``queues``, ``admission`` and ``breakers`` are left out, the mode comes from SQL,
  and ``errors["redis"]`` (or ``errors["broker"]`` for a separate broker) says why;
- the database (mode record, component history, mode timeline, queue statistics, the job table's size
  and oldest kept job): unreachable → ``components``, ``timeline``, ``queue_stats`` and ``job_table``
  are left out, the mode comes from the Redis mirror, and
  ``errors["database"]`` says why.

With neither readable the mode is ``"UNKNOWN"`` (``mode["source"]`` is None). A store that does not answer
within ``timeout_s`` is reported as such rather than waited for.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ultra_tasks import keys
from ultra_tasks.broker import is_amqp
from ultra_tasks.clock import utcnow
from ultra_tasks.config import Settings, get_settings
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs.admission import fill
from ultra_tasks.jobs.retention import job_table_summary
from ultra_tasks.jobs.stats import parked_depths, queue_depths, queue_stats, redis_location
from ultra_tasks.mode.policy import Mode
from ultra_tasks.redaction import known_secrets, redact_value
from ultra_tasks.redis_client import REDIS_DOWN, shared_redis

log = logging.getLogger(__name__)

#: seconds each store (Redis, the database) may take to answer before it is reported as not answering
PART_TIMEOUT_S = 5.0
#: mode changes listed in the timeline, newest first
TIMELINE_LIMIT = 50
#: the mode when neither the database nor the Redis mirror can be read
UNKNOWN_MODE = "UNKNOWN"

#: failures that mean a store could not be read (anything else is a bug and is raised)
_READ_ERRORS = (DependencyUnavailableError, redis.RedisError, SQLAlchemyError, OSError)


def fleet_snapshot(
    *,
    window_s: float = 300.0,
    redis_client: redis.Redis | None = None,
    timeout_s: float = PART_TIMEOUT_S,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The fleet's mode, components, breakers, queues, queue statistics, cache counters and mode timeline.

    ``redis_client`` replaces both the state Redis (REDIS_URL) and the broker (BROKER_URL) for reading.
    The shape is fixed in /work/notes/snapshot_contract.md; see the module docstring for outages.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s!r}")
    settings = get_settings()
    now = now or utcnow()
    state = redis_client or shared_redis()
    broker = redis_client if redis_client is not None else _broker_client(settings)
    redis_part = _Part("redis", redis_location(state), lambda: _read_redis(state, broker))
    db_part = _Part("database", "the database", lambda: _read_database(window_s, now))
    redis_part.join(timeout_s)
    db_part.join(timeout_s)

    snap: dict[str, Any] = {"generated_at": now.isoformat()}
    errors: dict[str, str] = {}
    from_redis, from_db = redis_part.value, db_part.value
    if from_db is not None:
        snap["mode"] = from_db["mode"]
    elif from_redis is not None:
        snap["mode"] = from_redis["mode"]
    else:
        snap["mode"] = {
            "mode": UNKNOWN_MODE,
            "reasons": [],
            "changed_at": None,
            "override": None,
            "source": None,
        }
    if from_db is not None:
        snap["components"] = from_db["components"]
    if from_redis is not None:
        snap["breakers"] = from_redis["breakers"]
        snap["all_providers_down"] = from_redis["all_providers_down"]
        if from_redis["queues"] is not None:
            snap["queues"] = from_redis["queues"]
        snap["admission"] = from_redis["admission"]
        if from_redis["broker_error"]:
            errors["broker"] = from_redis["broker_error"]
    if from_db is not None:
        snap["queue_stats"] = from_db["queue_stats"]
        snap["job_table"] = from_db["job_table"]
    snap["cache"] = from_redis["cache"] if from_redis is not None else {}
    if from_db is not None:
        snap["timeline"] = from_db["timeline"]
    snap["deployments"] = _deployments(snap, errors)
    if redis_part.error:
        errors["redis"] = redis_part.error
    if db_part.error:
        errors["database"] = db_part.error
    snap["errors"] = errors
    # reasons and errors are free text from checks, drivers and providers: no URL password or secret
    # setting may reach the page, the JSON or `ultra status` through them
    redacted: dict[str, Any] = redact_value(snap, known_secrets(settings))
    return redacted


def _deployments(snap: dict[str, Any], errors: dict[str, str]) -> list[dict[str, Any]]:
    """Each provider deployment with its last probe's status and its breaker state."""
    from ultra_tasks.errors import ConfigurationError
    from ultra_tasks.providers.status import deployment_rows, with_health

    try:
        rows = deployment_rows()
    except ConfigurationError as exc:
        errors["deployments"] = str(exc)
        return []
    return with_health(rows, snap.get("components"), snap.get("breakers"))


class _Part:
    """One store's read, in a daemon thread, so a store that hangs costs the caller ``timeout_s`` at most."""

    def __init__(self, name: str, where: str, read: Callable[[], dict[str, Any]]) -> None:
        self.name = name
        self.where = where
        self.value: dict[str, Any] | None = None
        self.error: str | None = None
        self._crash: BaseException | None = None
        self._read = read
        self._thread = threading.Thread(target=self._run, name=f"snapshot-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._read()
        except _READ_ERRORS as exc:
            self.error = " ".join(str(exc).split()) or type(exc).__name__  # drivers' messages span lines
        except BaseException as exc:  # a bug: re-raised in the caller's thread
            self._crash = exc

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.error = f"{self.where}: no answer within {timeout_s:g}s"
            log.warning("fleet snapshot: %s did not answer within %gs", self.name, timeout_s)
            return
        if self._crash is not None:
            raise self._crash
        if self.error:
            log.info("fleet snapshot: %s unreadable: %s", self.name, self.error)


def _broker_client(settings: Settings) -> redis.Redis | None:
    url = settings.effective_broker_url
    return shared_redis(url) if url.startswith(("redis://", "rediss://", "unix://")) else None


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


# --- Redis ---------------------------------------------------------------------------------------------
def read_redis_state(state: redis.Redis) -> dict[str, Any]:
    """The snapshot's Redis part alone (mode mirror, breakers, queues, cache), for the rollup's sampler;
    raises DependencyUnavailableError when Redis is unreachable."""
    broker = _broker_client(get_settings())
    return _read_redis(state, broker)


def _read_redis(state: redis.Redis, broker: redis.Redis | None) -> dict[str, Any]:
    try:
        return _read_redis_unmapped(state, broker)
    except REDIS_DOWN as exc:
        raise DependencyUnavailableError("redis", f"{redis_location(state)}: {exc}") from exc


def _read_redis_unmapped(state: redis.Redis, broker: redis.Redis | None) -> dict[str, Any]:
    mirror = state.hgetall(keys.mode_current())
    breakers = _breakers(state)
    parked = parked_depths(state)
    queues: dict[str, dict[str, int]] | None = None
    broker_error = None
    if broker is None and is_amqp():
        try:
            depths = queue_depths(None)  # RabbitMQ: "llm" (the three levels) and "ops"
            queues = {
                q: {"depth": n, "parked": sum(parked.values()) if q == "llm" else 0}
                for q, n in depths.items()
            }
        except DependencyUnavailableError as exc:
            broker_error = str(exc)
    elif broker is None:
        broker_error = "queue depths are read from a Redis or RabbitMQ broker only"
    elif broker is state:
        depths = queue_depths(broker)
        queues = {q: {"depth": n, "parked": parked.get(q, 0)} for q, n in depths.items()}
    else:
        try:
            depths = queue_depths(broker)
            queues = {q: {"depth": n, "parked": parked.get(q, 0)} for q, n in depths.items()}
        except DependencyUnavailableError as exc:
            broker_error = f"{redis_location(broker)}: {exc}"
    return {
        "mode": _mode_from_mirror(mirror),
        "breakers": breakers,
        "all_providers_down": all_providers_down(breakers),
        "queues": queues,
        "admission": fill(state).to_dict(),
        "broker_error": broker_error,
        "cache": _fleet_cache(state),
    }


def _mode_from_mirror(mirror: dict[Any, Any]) -> dict[str, Any]:
    """The mode as mirrored to Redis; NORMAL before anything was ever mirrored (as ``current_mode``)."""
    data = {_text(k): _text(v) for k, v in mirror.items()}
    try:
        reasons = json.loads(data.get("reasons") or "[]")
    except ValueError:
        reasons = []
    return {
        "mode": data.get("mode") or Mode.NORMAL.value,
        "reasons": reasons if isinstance(reasons, list) else [],
        # the mirror is rewritten on every evaluation: it knows when it was written, not when the mode changed
        "changed_at": None,
        "override": None,
        "source": "redis",
        "mirrored_at": data.get("at"),
    }


def all_providers_down(breakers: list[dict[str, Any]]) -> str | None:
    """What the fleet does while every provider's breaker is open (the all-down policy), or None."""
    from ultra_tasks.config import get_settings
    from ultra_tasks.providers.deployments import catalog

    names = set(catalog().by_name)
    providers = [b for b in breakers if str(b["name"]).split(":")[0] in names]
    if not providers or any(b["state"] in ("closed", "disabled") for b in providers):
        return None
    interval = get_settings().health_check_interval
    return (
        "every provider's breaker is open: LLM jobs are parked (cause: provider) instead of failing, and "
        f"the health checks probe each open breaker every {interval:g}s once its reset timeout has passed; "
        "a breaker that closes releases its jobs in a ramp (PARK_RAMP_FIRST, doubling every "
        "PARK_RAMP_INTERVAL). A breaker forced open waits for its operator."
    )


def _breakers(client: redis.Redis) -> list[dict[str, Any]]:
    from ultra_tasks.resilience.breaker import CircuitBreaker, breaker_names

    out = []
    for name in breaker_names(client):
        breaker = CircuitBreaker(name, redis_client=client)
        metrics = breaker.metrics()  # raises when Redis is gone (state alone would fall back to local)
        metrics.pop("redis_unavailable_calls", None)  # this reader's own count: meaningless here
        last_failure = breaker.last_failure_time
        out.append(
            {
                **metrics,
                "failure_count": breaker.failure_count,
                "last_failure_time": last_failure,
                "last_failure_at": _iso(datetime.fromtimestamp(last_failure, UTC)) if last_failure else None,
            }
        )
    return out


def _fleet_cache(client: redis.Redis) -> dict[str, Any]:
    """Fleet-wide cache counters per level (hits, misses, hit_rate, ...), {} until a process reported."""
    from ultra_tasks.metrics.cache import fleet_cache_stats

    return fleet_cache_stats(client)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the database --------------------------------------------------------------------------------------
def _read_database(window_s: float, now: datetime) -> dict[str, Any]:
    upgrade_schema()
    with session_scope() as s:
        record = s.get(OperationModeRecord, 1)
        latest = select(func.max(ComponentStatus.id)).group_by(ComponentStatus.component)
        components = [
            {
                "component": c.component,
                "kind": c.kind,
                "status": c.status,
                "reason": c.reason,
                "severity": c.severity,
                "at": _iso(c.at),
            }
            for c in s.execute(
                select(ComponentStatus)
                .where(ComponentStatus.id.in_(latest))
                .order_by(ComponentStatus.component)
            ).scalars()
        ]
        timeline = [
            {"from": t.from_mode, "to": t.to_mode, "reasons": t.reasons, "at": _iso(t.at)}
            for t in s.execute(
                select(ModeTransition).order_by(ModeTransition.id.desc()).limit(TIMELINE_LIMIT)
            ).scalars()
        ]
    if record is None:  # nothing evaluated yet: NORMAL, as SystemOperationMode reads it
        mode: dict[str, Any] = {
            "mode": Mode.NORMAL.value,
            "reasons": [],
            "changed_at": None,
            "override": None,
        }
    else:
        until = record.override_until
        active = bool(record.override_mode and until is not None and until > now)
        mode = {
            "mode": record.mode,
            "reasons": list(record.reasons or []),
            "changed_at": _iso(record.changed_at),
            "override": {"mode": record.override_mode, "until": _iso(until)} if active else None,
        }
    mode["source"] = "database"
    return {
        "mode": mode,
        "components": components,
        "timeline": timeline,
        "queue_stats": queue_stats(window_s, now=now),
        "job_table": job_table_summary(),
    }
