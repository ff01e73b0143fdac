"""The operation mode as the fleet records it: the Redis mirror workers act on, and the SQL record with its
history and the components' latest checks.

The database holds the record (override and time of the last change included); the mirror holds the mode
and its reasons as last evaluated, so it can stand in for the record while the database is unreadable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import func, select

from ultra_tasks import keys
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.mode.metrics import time_in_modes
from ultra_tasks.mode.policy import Mode

#: mode changes kept in the history's timeline, newest first
TIMELINE_LIMIT = 50
#: the mode when neither the database nor the Redis mirror can be read
UNKNOWN_MODE = "UNKNOWN"


def iso(at: datetime | None) -> str | None:
    """ISO 8601 in UTC (a naive time from SQLite is UTC)."""
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


@dataclass(frozen=True)
class Override:
    """An operator's override that decides the mode until ``until``."""

    mode: str
    until: datetime | None


@dataclass(frozen=True)
class ModeView:
    """The current mode, its reasons and where it was read (``source`` None: nowhere could be read)."""

    mode: str
    reasons: list[Any]
    source: str | None
    changed_at: datetime | None = None
    #: only while it is in force
    override: Override | None = None
    #: when the mirror was last written (the mirror knows that, not when the mode changed)
    mirrored_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "reasons": self.reasons,
            "changed_at": iso(self.changed_at),
            "override": (
                {"mode": self.override.mode, "until": iso(self.override.until)} if self.override else None
            ),
            "source": self.source,
        }
        if self.source == "redis":
            out["mirrored_at"] = self.mirrored_at
        return out


UNKNOWN = ModeView(UNKNOWN_MODE, [], None)


@dataclass(frozen=True)
class ModeStay:
    """Time spent in one mode since the history began."""

    total_s: float
    stays: int
    average_stay_s: float | None


@dataclass(frozen=True)
class ModeChange:
    from_mode: str
    to_mode: str
    reasons: list[Any]
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_mode, "to": self.to_mode, "reasons": self.reasons, "at": iso(self.at)}


@dataclass(frozen=True)
class ModeHistory:
    """The SQL record: the current mode, every change counted by pair, time in each mode, recent changes."""

    current: ModeView
    transitions: dict[tuple[str, str], int]
    time_in_modes: dict[str, ModeStay]
    #: newest first, at most TIMELINE_LIMIT
    timeline: list[ModeChange]


@dataclass(frozen=True)
class ComponentView:
    """A component's latest reported check."""

    component: str
    kind: str
    status: str
    reason: str
    severity: str
    at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "severity": self.severity,
            "at": iso(self.at),
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_mode_mirror(client: redis.Redis) -> ModeView:
    """The mode as mirrored to Redis; NORMAL before anything was mirrored (as ``current_mode`` reads it)."""
    data = {_text(k): _text(v) for k, v in client.hgetall(keys.mode_current()).items()}
    try:
        reasons = json.loads(data.get("reasons") or "[]")
    except ValueError:
        reasons = []
    return ModeView(
        mode=data.get("mode") or Mode.NORMAL.value,
        reasons=reasons if isinstance(reasons, list) else [],
        source="redis",
        mirrored_at=data.get("at"),
    )


def read_mode_history(now: datetime) -> ModeHistory:
    """The mode record (NORMAL before any evaluation), transitions by pair, time in modes and the timeline."""
    upgrade_schema()
    with session_scope() as s:
        record = s.get(OperationModeRecord, 1)
        pairs = s.execute(
            select(ModeTransition.from_mode, ModeTransition.to_mode, func.count()).group_by(
                ModeTransition.from_mode, ModeTransition.to_mode
            )
        ).all()
        timeline = [
            ModeChange(t.from_mode, t.to_mode, list(t.reasons or []), t.at)
            for t in s.execute(
                select(ModeTransition).order_by(ModeTransition.id.desc()).limit(TIMELINE_LIMIT)
            ).scalars()
        ]
    if record is None:
        current = ModeView(Mode.NORMAL.value, [], "database")
    else:
        until = record.override_until
        active = bool(record.override_mode and until is not None and until > now)
        current = ModeView(
            mode=record.mode,
            reasons=list(record.reasons or []),
            source="database",
            changed_at=record.changed_at,
            override=Override(str(record.override_mode), until) if active else None,
        )
    stays = {
        mode: ModeStay(float(f["total_s"]), int(f["stays"]), f["average_stay_s"])
        for mode, f in time_in_modes(now=now)["modes"].items()
    }
    return ModeHistory(
        current=current,
        transitions={(str(a), str(b)): int(n) for a, b, n in pairs},
        time_in_modes=stays,
        timeline=timeline,
    )


def read_components() -> list[ComponentView]:
    """Each component's latest check, by component name."""
    upgrade_schema()
    latest = select(func.max(ComponentStatus.id)).group_by(ComponentStatus.component)
    with session_scope() as s:
        return [
            ComponentView(c.component, c.kind, c.status, c.reason, c.severity, c.at)
            for c in s.execute(
                select(ComponentStatus)
                .where(ComponentStatus.id.in_(latest))
                .order_by(ComponentStatus.component)
            ).scalars()
        ]
