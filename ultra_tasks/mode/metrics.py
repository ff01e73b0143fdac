"""Operation mode metrics from SQL: how often the mode changed, how long it stayed in each mode, and each
component's recent statuses. Plain functions returning JSON-safe dicts (for the Prometheus collector, the
status page and `ultra`); times are ISO 8601 UTC strings, durations seconds.

A window is ``(now - window_s, now]``; ``window_s=None`` means all recorded history, which starts at the
first recorded transition (the mode record keeps no creation time once it has changed). Stays cut by the
window's edges count with the part inside it, so the average stay is over what the window saw. ``now``
and ``engine`` are injectable so the figures can be checked exactly. Reads go to a read replica when there
are some: a few seconds of lag does not matter to these figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import read_session_scope
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.mode.policy import Mode

MODES = [m.value for m in Mode]
#: component statuses returned per component by default
DEFAULT_HISTORY_LIMIT = 20


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _window(now: datetime | None, window_s: float | None) -> tuple[datetime, datetime | None]:
    if window_s is not None and window_s <= 0:
        raise ValueError(f"window_s must be positive seconds or None (all history), got {window_s!r}")
    until = now or utcnow()
    return until, (until - timedelta(seconds=window_s) if window_s is not None else None)


def _transitions(s: Session, since: datetime | None, until: datetime) -> list[ModeTransition]:
    q = select(ModeTransition).where(ModeTransition.at <= until)
    if since is not None:
        q = q.where(ModeTransition.at > since)
    return list(s.execute(q.order_by(ModeTransition.at, ModeTransition.id)).scalars())


def mode_changes(
    *, window_s: float | None = None, now: datetime | None = None, engine: Engine | None = None
) -> dict[str, Any]:
    """How many times the mode changed in the window, by transition and by mode entered."""
    until, since = _window(now, window_s)
    with read_session_scope(engine) as s:
        rows = _transitions(s, since, until)
    return {
        "window_s": window_s,
        "since": _iso(since),
        "until": _iso(until),
        "changes": len(rows),
        "by_transition": dict(Counter(f"{r.from_mode}->{r.to_mode}" for r in rows)),
        "entered": {mode: sum(r.to_mode == mode for r in rows) for mode in MODES},
        "last_change_at": _iso(rows[-1].at) if rows else None,
    }


def time_in_modes(
    *, window_s: float | None = None, now: datetime | None = None, engine: Engine | None = None
) -> dict[str, Any]:
    """Seconds spent in each mode over the window: total, number of stays, average stay, share."""
    until, since = _window(now, window_s)
    with read_session_scope(engine) as s:
        record = s.get(OperationModeRecord, 1)
        if since is None:
            first = s.execute(select(func.min(ModeTransition.at)).where(ModeTransition.at <= until)).scalar()
            since = first if first is not None else (record.changed_at if record else until)
            since = min(since, until)
        before = s.execute(
            select(ModeTransition.to_mode)
            .where(ModeTransition.at <= since)
            .order_by(ModeTransition.at.desc(), ModeTransition.id.desc())
            .limit(1)
        ).scalar()
        rows = _transitions(s, since, until)
        last = s.execute(
            select(ModeTransition)
            .where(ModeTransition.at <= until)
            .order_by(ModeTransition.at.desc(), ModeTransition.id.desc())
            .limit(1)
        ).scalar()
    if last is not None:
        current = {"mode": last.to_mode, "since": _iso(last.at)}
    elif record is not None:
        current = {"mode": record.mode, "since": _iso(record.changed_at)}
    else:
        current = {"mode": Mode.NORMAL.value, "since": None}
    if before is not None:
        mode = before
    elif rows:
        mode = rows[0].from_mode
    else:
        mode = record.mode if record else Mode.NORMAL.value

    totals: dict[str, float] = defaultdict(float)
    stays: Counter[str] = Counter()
    cursor = since
    for end, next_mode in [*((r.at, r.to_mode) for r in rows), (until, None)]:
        length = (end - cursor).total_seconds()
        if length > 0:  # a stay of no length (two changes at one instant) is not a stay
            totals[mode] += length
            stays[mode] += 1
        if next_mode is not None:
            mode, cursor = next_mode, end
    span = (until - since).total_seconds()
    return {
        "window_s": window_s,
        "since": _iso(since),
        "until": _iso(until),
        "current": current,
        "modes": {
            m: {
                "total_s": totals[m],
                "stays": stays[m],
                "average_stay_s": totals[m] / stays[m] if stays[m] else None,
                "share": totals[m] / span if span > 0 else None,
            }
            for m in MODES
        },
    }


def component_history(
    *,
    component: str | None = None,
    limit: int = DEFAULT_HISTORY_LIMIT,
    window_s: float | None = None,
    now: datetime | None = None,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Per component: its latest status, its last ``limit`` statuses (newest first) and how many of each
    status it reported in the window."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit!r}")
    until, since = _window(now, window_s)
    conditions = [ComponentStatus.at <= until]
    if since is not None:
        conditions.append(ComponentStatus.at > since)
    if component is not None:
        conditions.append(ComponentStatus.component == component)
    rank = (
        func.row_number()
        .over(
            partition_by=ComponentStatus.component,
            order_by=(ComponentStatus.at.desc(), ComponentStatus.id.desc()),
        )
        .label("rank")
    )
    ranked = select(ComponentStatus.id, rank).where(*conditions).subquery()
    with read_session_scope(engine) as s:
        rows = s.execute(
            select(ComponentStatus)
            .join(ranked, ranked.c.id == ComponentStatus.id)
            .where(ranked.c.rank <= limit)
            .order_by(ComponentStatus.component, ComponentStatus.at.desc(), ComponentStatus.id.desc())
        ).scalars()
        history: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            history[r.component].append(
                {
                    "status": r.status,
                    "reason": r.reason,
                    "severity": r.severity,
                    "kind": r.kind,
                    "at": _iso(r.at),
                }
            )
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for name, status, n in s.execute(
            select(ComponentStatus.component, ComponentStatus.status, func.count())
            .where(*conditions)
            .group_by(ComponentStatus.component, ComponentStatus.status)
        ):
            counts[name][status] = int(n)
    return {
        "window_s": window_s,
        "since": _iso(since),
        "until": _iso(until),
        "components": {
            name: {"latest": entries[0], "history": entries, "status_counts": counts[name]}
            for name, entries in sorted(history.items())
        },
    }


def mode_metrics(
    *, window_s: float = 3600.0, now: datetime | None = None, engine: Engine | None = None
) -> dict[str, Any]:
    """Everything above at once: changes and time in modes over the window and over all history, and the
    component history of the window."""
    now = now or utcnow()
    return {
        "changes": mode_changes(window_s=window_s, now=now, engine=engine),
        "changes_all_time": mode_changes(now=now, engine=engine),
        "time_in_modes": time_in_modes(window_s=window_s, now=now, engine=engine),
        "time_in_modes_all_time": time_in_modes(now=now, engine=engine),
        "components": component_history(window_s=window_s, now=now, engine=engine),
    }
