"""``SystemOperationMode``: one global mode record in SQL, mirrored in Redis, broadcast on change.

Component statuses go to the ``component_status`` history; an evaluation applies the policy (policy.py)
inside one transaction that locks the mode row, so concurrent evaluators cannot both transition. A change
is recorded in ``mode_transitions``, mirrored to Redis (workers read the mode there, without SQL) and
published on ``ultra:mode:events``; every process's listeners hear it from that channel, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import read_session_scope, session_scope
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.mode.policy import (
    OK,
    ComponentState,
    Mode,
    evaluate,
    is_unhealthy,
    status_for_severity,
)
from ultra_tasks.mode.webhook import notify_mode_change
from ultra_tasks.providers.status import provider_groups
from ultra_tasks.redis_client import REDIS_DOWN as DOWN
from ultra_tasks.redis_client import shared_redis

log = logging.getLogger(__name__)

Listener = Callable[[str, str, list[dict[str, Any]]], Any]
#: evaluations in a row that must call for a better mode before the mode improves
DEFAULT_RECOVERY_CHECKS = 2


class SystemOperationMode:
    """The fleet's operation mode. ``NORMAL``, ``DEGRADED`` and ``EMERGENCY`` are public names."""

    NORMAL = Mode.NORMAL.value
    DEGRADED = Mode.DEGRADED.value
    EMERGENCY = Mode.EMERGENCY.value

    def __init__(
        self,
        *,
        redis_client: redis.Redis | None = None,
        recovery_checks: int = DEFAULT_RECOVERY_CHECKS,
    ) -> None:
        self.redis = redis_client or shared_redis()
        self.recovery_checks = recovery_checks
        self.mode_change_listeners: list[tuple[Listener, asyncio.AbstractEventLoop | None]] = []
        self._listener_thread: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            upgrade_schema()
        except DependencyUnavailableError as exc:
            # the mode is still read from Redis and decided through it; the schema is checked again later
            log.warning("operation mode starts without its database: %s", exc)

    # --- reading --------------------------------------------------------------------------------------
    @property
    def current_mode(self) -> str:
        """From the Redis mirror; from SQL when Redis cannot answer; NORMAL before any record exists."""
        with contextlib.suppress(*DOWN):
            mirrored = self.redis.hget(keys.mode_current(), "mode")
            if mirrored:
                return str(mirrored)
        record = self._record()
        return record.mode if record else self.NORMAL

    @property
    def degradation_reasons(self) -> list[dict[str, Any]]:
        record = self._record()
        return list(record.reasons) if record else []

    @property
    def degraded_components(self) -> dict[str, dict[str, Any]]:
        return {c.component: c.as_reason() for c in self.component_states() if is_unhealthy(c)}

    def _record(self) -> OperationModeRecord | None:
        # A replica may be a moment behind: fine for showing the mode (and it still answers when the
        # primary is down); evaluate() and the override methods lock the primary's row instead.
        with read_session_scope() as s:
            return s.get(OperationModeRecord, 1)

    def component_states(self, *, primary: bool = False) -> list[ComponentState]:
        """The latest status of every component ever reported; from a read replica unless ``primary``
        (a replica may lag: whatever decides the mode must read the primary)."""
        with session_scope() if primary else read_session_scope() as s:
            latest = select(func.max(ComponentStatus.id)).group_by(ComponentStatus.component)
            rows = s.execute(select(ComponentStatus).where(ComponentStatus.id.in_(latest))).scalars()
            return [ComponentState(r.component, r.kind, r.status, r.reason, r.severity) for r in rows]

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        with read_session_scope() as s:  # for display: a replica's moment of lag is harmless
            rows = s.execute(select(ModeTransition).order_by(ModeTransition.id.desc()).limit(limit)).scalars()
            return [
                {"from": r.from_mode, "to": r.to_mode, "reasons": r.reasons, "at": r.at.isoformat()}
                for r in rows
            ]

    # --- reporting components -------------------------------------------------------------------------
    def record_component(
        self,
        component: str,
        status: str,
        reason: str = "",
        *,
        kind: str = "component",
        severity: str = "medium",
    ) -> None:
        with session_scope() as s:
            s.add(
                ComponentStatus(
                    component=component,
                    kind=kind,
                    status=status,
                    reason=reason[:1000],
                    severity=severity,
                    at=utcnow(),
                )
            )

    async def mark_component_degraded(
        self, component: str, reason: str, severity: str = "medium", *, kind: str = "component"
    ) -> str:
        """Record a component as degraded (critical for high/critical severity) and re-evaluate the mode."""
        await asyncio.to_thread(
            self.record_component,
            component,
            status_for_severity(severity),
            reason,
            kind=kind,
            severity=severity,
        )
        return await asyncio.to_thread(self.evaluate)

    async def mark_component_recovered(self, component: str, *, kind: str = "component") -> str:
        await asyncio.to_thread(self.record_component, component, OK, "recovered", kind=kind, severity="low")
        return await asyncio.to_thread(self.evaluate)

    # --- deciding --------------------------------------------------------------------------------------
    def evaluate(self) -> str:
        """Apply the policy, hysteresis and any override; record and broadcast a change; return the mode."""
        # the primary: a status recorded a moment ago must count, and this decides a write
        wanted, reasons = evaluate(self.component_states(primary=True), provider_groups())
        now = utcnow()
        change: tuple[str, str, list[dict[str, Any]]] | None = None
        with session_scope() as s:
            record = _locked_record(s, now)
            current = Mode(record.mode)
            until = record.override_until
            overridden = bool(record.override_mode and until and until > now)
            if overridden and until is not None:
                wanted = Mode(str(record.override_mode))
                reasons = [
                    {
                        "component": "operator",
                        "kind": "override",
                        "status": "override",
                        "severity": "high",
                        "reason": f"manual override until {until.isoformat()}",
                    }
                ]
            elif record.override_mode:
                record.override_mode = record.override_until = None  # expired: the policy decides again
            if not overridden and wanted.rank < current.rank:
                # Recovery must hold for recovery_checks evaluations in a row: a flapping check can't flap it.
                record.better_checks = (record.better_checks or 0) + 1
                if record.better_checks < self.recovery_checks:
                    wanted = current
            else:
                record.better_checks = 0  # same, worse or overridden: any recovery streak is broken
            if wanted != current:
                record.better_checks = 0
                s.add(ModeTransition(from_mode=current.value, to_mode=wanted.value, reasons=reasons, at=now))
                record.mode, record.changed_at = wanted.value, now
                change = (current.value, wanted.value, reasons)
            record.reasons = reasons
            since = record.changed_at
        self._mirror(wanted.value, reasons, now, since=since)
        if change:
            log.warning(
                "operation mode %s -> %s (%s)",
                change[0],
                change[1],
                "; ".join(f"{r.get('component')}: {r.get('reason')}" for r in change[2]) or "recovered",
            )
            self._publish(*change, now)
            notify_mode_change(*change, now)  # MODE_WEBHOOK_URL, from the one process that made the change
        return wanted.value

    def set_override(self, mode: str, ttl_seconds: float, reason: str = "operator") -> str:
        """Force ``mode`` for ``ttl_seconds`` (then the policy decides again)."""
        Mode(mode)  # ValueError names a wrong mode
        with session_scope() as s:
            record = _locked_record(s, utcnow())
            record.override_mode = mode
            record.override_until = utcnow() + timedelta(seconds=ttl_seconds)
        return self.evaluate()

    def clear_override(self) -> str:
        with session_scope() as s:
            record = s.get(OperationModeRecord, 1, with_for_update=True)
            if record is not None:
                record.override_mode = record.override_until = None
                record.better_checks = self.recovery_checks  # an operator's clear applies at once
        return self.evaluate()

    def evaluate_without_database(self, components: list[ComponentState]) -> str:
        """The database is unreachable: decide from ``components`` (this round's checks) against the Redis
        mirror, so the fleet still reacts (the database being down is itself a reason to degrade).
        Worsening applies at once; recovery waits for the database (hysteresis needs its record). A change
        is mirrored, broadcast and posted as usual, and its transition and the components' statuses are
        kept in Redis and written to SQL by the next evaluation that reaches the database."""
        wanted, reasons = evaluate(components, provider_groups())
        now = utcnow()
        try:
            mirrored = self.redis.hget(keys.mode_current(), "mode")
        except DOWN:
            return str(wanted.value)  # neither store answers: nothing can be recorded or broadcast
        current = Mode(str(mirrored)) if mirrored else Mode.NORMAL
        pending: list[dict[str, Any]] = [
            {
                "kind": "component",
                "component": c.component,
                "type": c.kind,
                "status": c.status,
                "reason": c.reason,
                "severity": c.severity,
                "at": now.isoformat(),
            }
            for c in components
        ]
        if wanted.rank > current.rank:
            pending.append(
                {
                    "kind": "transition",
                    "from": current.value,
                    "to": wanted.value,
                    "reasons": reasons,
                    "at": now.isoformat(),
                }
            )
            self._mirror(wanted.value, reasons, now, since=now)
            log.warning("operation mode %s -> %s while the database is unreachable", current, wanted)
            self._publish(current.value, wanted.value, reasons, now)
            notify_mode_change(current.value, wanted.value, reasons, now)
            current = wanted
        with contextlib.suppress(*DOWN):
            self.redis.rpush(keys.mode_buffer(), *(json.dumps(p) for p in pending))
        return current.value

    def flush_buffered(self) -> int:
        """Write what evaluations made while the database was down (statuses, transitions) to SQL, and
        bring the mode record to the last mode decided meanwhile. Returns the entries written."""
        upgrade_schema()  # cheap once done; raises while the database is still down
        try:
            raw = self.redis.lrange(keys.mode_buffer(), 0, -1)
        except DOWN:
            return 0
        if not raw:
            return 0
        entries = [json.loads(r) for r in raw]
        with session_scope() as s:
            record = _locked_record(s, utcnow())
            for e in entries:
                at = datetime.fromisoformat(e["at"])
                if e["kind"] == "component":
                    s.add(
                        ComponentStatus(
                            component=e["component"],
                            kind=e["type"],
                            status=e["status"],
                            reason=e["reason"],
                            severity=e["severity"],
                            at=at,
                        )
                    )
                else:
                    s.add(ModeTransition(from_mode=e["from"], to_mode=e["to"], reasons=e["reasons"], at=at))
                    record.mode, record.changed_at, record.reasons = e["to"], at, e["reasons"]
                    record.better_checks = 0
        self.redis.ltrim(keys.mode_buffer(), len(raw), -1)
        log.warning("wrote %d mode records kept while the database was down", len(entries))
        return len(entries)

    def _mirror(self, mode: str, reasons: list[dict[str, Any]], at: datetime, *, since: datetime) -> None:
        """``since``: when the mode became ``mode`` (what is scoped to one episode of a mode keys on it,
        e.g. DEGRADED's llm.low start schedule)."""
        with contextlib.suppress(*DOWN):
            self.redis.hset(
                keys.mode_current(),
                mapping={
                    "mode": mode,
                    "reasons": json.dumps(reasons),
                    "at": at.isoformat(),
                    "since": since.isoformat(),
                },
            )

    def _publish(self, old: str, new: str, reasons: list[dict[str, Any]], at: datetime) -> None:
        message = json.dumps({"from": old, "to": new, "reasons": reasons, "at": at.isoformat()})
        try:
            self.redis.publish(keys.mode_events(), message)
        except DOWN as exc:
            log.warning("mode change %s -> %s not broadcast (Redis unreachable: %s)", old, new, exc)

    # --- listening -------------------------------------------------------------------------------------
    def add_mode_change_listener(self, listener: Listener) -> None:
        """Call ``listener(old_mode, new_mode, reasons)`` (sync or async) once per change, fleet-wide."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self.mode_change_listeners.append((listener, loop))
        if self._listener_thread is None:
            ready = threading.Event()
            self._listener_thread = threading.Thread(
                target=self._listen, args=(ready,), name="mode-events", daemon=True
            )
            self._listener_thread.start()
            ready.wait(5)

    def _listen(self, ready: threading.Event) -> None:
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.mode_events())
                ready.set()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message.get("type") == "message":
                        self._dispatch(json.loads(message["data"]))
            except DOWN:
                self._stop.wait(1.0)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _dispatch(self, event: dict[str, Any]) -> None:
        for listener, loop in list(self.mode_change_listeners):
            try:
                result = listener(event["from"], event["to"], event.get("reasons") or [])
                if inspect.isawaitable(result):
                    if loop is not None and loop.is_running():
                        asyncio.run_coroutine_threadsafe(_await(result), loop)
                    else:
                        asyncio.run(_await(result))
            except Exception:
                log.exception("mode change listener %r failed", listener)

    def close(self) -> None:
        self._stop.set()
        if self._listener_thread is not None:
            self._listener_thread.join(2)


def _locked_record(s: Any, now: datetime) -> OperationModeRecord:
    """The mode row, locked for this transaction (created NORMAL on first use)."""
    record = s.get(OperationModeRecord, 1, with_for_update=True)
    if record is None:
        record = OperationModeRecord(
            id=1, mode=Mode.NORMAL.value, reasons=[], changed_at=now, better_checks=0
        )
        s.add(record)
        s.flush()
    return record


async def _await(awaitable: Any) -> None:
    await awaitable
