"""The fleet over a window (15 minutes, an hour, a day), for the status page's plots: the per-minute rollup
(metrics/rollup.py) read back into series, and the mode over the window from the SQL mode history.

Each store degrades alone: Redis unreadable → no series and ``errors["redis"]``; the database unreadable →
the mode band comes from the mode the rollup sampled each minute (coarser) and ``errors["database"]`` says
why. Nothing here raises for an outage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ultra_tasks import keys
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.metrics.rollup import HISTOGRAM_BOUNDS_S, OVERFLOW_BUCKET, minute_of
from ultra_tasks.mode.policy import Mode

log = logging.getLogger(__name__)

#: statuses of a finished job, in the order the plot lists them
JOB_STATUSES = ("succeeded", "failed", "expired")


@dataclass(frozen=True)
class Window:
    """A selectable span: its name in the URL, its length and how many minutes one plotted point covers."""

    name: str
    seconds: int
    bin_minutes: int
    label: str

    @property
    def bins(self) -> int:
        return self.seconds // 60 // self.bin_minutes


WINDOWS = {
    w.name: w
    for w in (
        Window("15m", 15 * 60, 1, "15 minutes"),
        Window("1h", 3600, 1, "1 hour"),
        Window("24h", 24 * 3600, 10, "24 hours"),
    )
}
DEFAULT_WINDOW = "1h"


def parse_window(text: str | None) -> Window:
    """The window named ``text`` (None: the default); ValueError naming the choices otherwise."""
    name = DEFAULT_WINDOW if text is None else text.strip()
    if name not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {text!r}")
    return WINDOWS[name]


@dataclass(frozen=True)
class Series:
    """One line of a plot: a value per bin (None where nothing was recorded)."""

    name: str
    values: list[float | None]
    #: drawn dashed (e.g. parked jobs beside queue depth)
    dashed: bool = False
    #: series of one group share a colour (a queue's depth and its parked jobs); the name when empty
    group: str = ""


@dataclass(frozen=True)
class Plot:
    id: str
    title: str
    unit: str
    series: list[Series]
    #: the y axis ends here at least (e.g. 1.0 for a rate)
    y_max: float | None = None


@dataclass(frozen=True)
class ModeSpan:
    mode: str
    start: datetime
    end: datetime


@dataclass
class History:
    window: Window
    start: datetime
    end: datetime
    #: the start of each bin
    bins: list[datetime]
    plots: list[Plot] = field(default_factory=list)
    mode_spans: list[ModeSpan] = field(default_factory=list)
    #: "database" (the mode history) or "rollup" (the mode sampled each minute), None with neither
    mode_source: str | None = None
    errors: dict[str, str] = field(default_factory=dict)


def read_history(
    window: Window, *, client: redis.Redis | None = None, now: datetime | None = None
) -> History:
    """The window ending now: plots from the rollup and the mode band."""
    from ultra_tasks.redis_client import shared_redis

    now = now or datetime.now(UTC)
    end_minute = now.replace(second=0, microsecond=0)
    first = end_minute - timedelta(minutes=window.bins * window.bin_minutes - 1)
    minutes = [first + timedelta(minutes=i) for i in range(window.bins * window.bin_minutes)]
    bins = minutes[:: window.bin_minutes]
    history = History(window, first, now, bins)
    rows: list[dict[str, str]] | None = None
    try:
        rows = _read_minutes(client or shared_redis(), minutes)
    except (redis.RedisError, OSError, DependencyUnavailableError) as exc:
        history.errors["redis"] = " ".join(str(exc).split()) or type(exc).__name__
    if rows is not None:
        history.plots = plots_from_rows(rows, window.bin_minutes)
    try:
        history.mode_spans = _mode_spans(first, now)
        history.mode_source = "database"
    except (SQLAlchemyError, DependencyUnavailableError, OSError) as exc:
        history.errors["database"] = " ".join(str(exc).split()) or type(exc).__name__
        if rows is not None:
            history.mode_spans = _sampled_mode_spans(rows, minutes, now)
            history.mode_source = "rollup"
    return history


def _read_minutes(client: redis.Redis, minutes: list[datetime]) -> list[dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(keys.rollup_minute(minute_of(minute.timestamp())))
    return [{_text(k): _text(v) for k, v in raw.items()} for raw in pipe.execute()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(row: dict[str, str], name: str) -> float | None:
    value = row.get(name)
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _names(rows: list[dict[str, str]], prefix: str) -> list[str]:
    return sorted({f[len(prefix) :] for row in rows for f in row if f.startswith(prefix)})


def _chunks(rows: list[dict[str, str]], size: int) -> list[list[dict[str, str]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def plots_from_rows(rows: list[dict[str, str]], size: int) -> list[Plot]:
    """The plots of consecutive minutes' rollup hashes (oldest first), ``size`` minutes per point."""
    chunks = _chunks(rows, size)
    return [
        _jobs_plot(chunks, size),
        _queues_plot(rows, chunks),
        _latency_plot(chunks),
        _providers_plot(rows, size),
        _cache_plot(rows, size),
    ]


def _jobs_plot(chunks: list[list[dict[str, str]]], size: int) -> Plot:
    series = [
        Series(status, [sum(_num(r, f"jobs:{status}") or 0.0 for r in chunk) / size for chunk in chunks])
        for status in JOB_STATUSES
    ]
    return Plot("plot-jobs", "Jobs finished per minute, by status", "jobs/min", series)


def _gauge_max(chunk: list[dict[str, str]], name: str) -> float | None:
    values = [v for r in chunk if (v := _num(r, name)) is not None]
    return max(values) if values else None


def _queues_plot(rows: list[dict[str, str]], chunks: list[list[dict[str, str]]]) -> Plot:
    series = [Series(q, [_gauge_max(c, f"depth:{q}") for c in chunks]) for q in _names(rows, "depth:")]
    series += [
        Series(f"{q} parked", [_gauge_max(c, f"parked:{q}") for c in chunks], dashed=True, group=q)
        for q in _names(rows, "parked:")
    ]
    return Plot("plot-queues", "Queue depth and parked jobs per queue", "jobs", series)


def _quantile(counts: list[float], q: float) -> float | None:
    """The q-quantile of a histogram, interpolated linearly inside its bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = HISTOGRAM_BOUNDS_S[i - 1] if i > 0 else 0.0
            high = HISTOGRAM_BOUNDS_S[i] if i < len(HISTOGRAM_BOUNDS_S) else HISTOGRAM_BOUNDS_S[-1] * 2
            return low + (high - low) * (rank - seen) / n
        seen += n
    return HISTOGRAM_BOUNDS_S[-1]


def _histogram(chunk: list[dict[str, str]], name: str) -> list[float]:
    return [sum(_num(r, f"{name}:{i}") or 0.0 for r in chunk) for i in range(OVERFLOW_BUCKET + 1)]


def _latency_plot(chunks: list[list[dict[str, str]]]) -> Plot:
    series = []
    for name, label in (("wait", "wait"), ("run", "run time")):
        hists = [_histogram(c, name) for c in chunks]
        series.append(Series(f"{label} p50", [_quantile(h, 0.5) for h in hists], group=name))
        series.append(Series(f"{label} p95", [_quantile(h, 0.95) for h in hists], dashed=True, group=name))
    return Plot("plot-latency", "Wait and run time, p50 and p95", "s", series)


def _rates(rows: list[dict[str, str]], name: str, size: int) -> list[float | None]:
    """Per-minute rate per bin of a cumulative counter sampled now and then (None before the first pair of
    samples and where no sample fell in a bin); a counter that went back (reset) counts from zero."""
    out: list[float | None] = []
    prev_value: float | None = None
    prev_at: float | None = None
    for chunk in _chunks(rows, size):
        delta = 0.0
        elapsed = 0.0
        seen = False
        for r in chunk:
            value, at = _num(r, name), _num(r, "sampled_at")
            if value is None or at is None:
                continue
            if prev_value is not None and prev_at is not None and at > prev_at:
                delta += value - prev_value if value >= prev_value else value
                elapsed += at - prev_at
                seen = True
            prev_value, prev_at = value, at
        out.append(delta / (elapsed / 60.0) if seen and elapsed > 0 else None)
    return out


def _providers_plot(rows: list[dict[str, str]], size: int) -> Plot:
    series = []
    for name in _names(rows, "calls:"):
        series.append(Series(f"{name} calls", _rates(rows, f"calls:{name}", size), group=name))
        failures = _rates(rows, f"failures:{name}", size)
        series.append(Series(f"{name} failures", failures, dashed=True, group=name))
    return Plot("plot-providers", "Provider calls and failures per minute, per breaker", "calls/min", series)


def _cache_plot(rows: list[dict[str, str]], size: int) -> Plot:
    series = []
    for level in _names(rows, "hits:"):
        hits = _rates(rows, f"hits:{level}", size)
        misses = _rates(rows, f"misses:{level}", size)
        rate = [
            h / (h + m) if h is not None and m is not None and h + m > 0 else None
            for h, m in zip(hits, misses, strict=True)
        ]
        series.append(Series(level, rate))
    return Plot("plot-cache", "Cache hit rate per level", "hit rate", series, y_max=1.0)


def _mode_spans(start: datetime, end: datetime) -> list[ModeSpan]:
    """The mode over [start, end] from the recorded transitions (NORMAL before any was recorded)."""
    from ultra_tasks.db.engine import session_scope
    from ultra_tasks.db.migrate import upgrade_schema
    from ultra_tasks.db.models import ModeTransition

    upgrade_schema()
    with session_scope() as s:
        before = s.execute(
            select(ModeTransition.to_mode)
            .where(ModeTransition.at < start)
            .order_by(ModeTransition.at.desc(), ModeTransition.id.desc())
            .limit(1)
        ).scalar()
        within = s.execute(
            select(ModeTransition.from_mode, ModeTransition.to_mode, ModeTransition.at)
            .where(ModeTransition.at >= start, ModeTransition.at <= end)
            .order_by(ModeTransition.at, ModeTransition.id)
        ).all()
    current = before or (within[0].from_mode if within else Mode.NORMAL.value)
    spans: list[ModeSpan] = []
    at = start
    for row in within:
        changed = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        if changed > at:
            spans.append(ModeSpan(current, at, changed))
        current, at = row.to_mode, max(at, changed)
    spans.append(ModeSpan(current, at, end))
    return spans


def _sampled_mode_spans(rows: list[dict[str, str]], minutes: list[datetime], end: datetime) -> list[ModeSpan]:
    spans: list[ModeSpan] = []
    for row, minute in zip(rows, minutes, strict=True):
        mode = row.get("mode")
        if not mode:
            continue
        stop = min(end, minute + timedelta(minutes=1))
        if spans and spans[-1].mode == mode and spans[-1].end == minute:
            spans[-1] = ModeSpan(mode, spans[-1].start, stop)
        else:
            spans.append(ModeSpan(mode, minute, stop))
    return spans
