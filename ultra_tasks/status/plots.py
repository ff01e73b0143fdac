"""Server-side SVG for the status page: a line plot per ``Plot`` of status/history.py and a band of the
mode over the window. No script, no external resource, presentation attributes rather than style
attributes, every text escaped: the page keeps its CSP (``default-src 'none'``) and works offline.

Each point is a ``<circle>`` with a ``<title>`` (its series, value and time show on hover); lines are
``<polyline>``s, broken where a bin has no value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from html import escape

from ultra_tasks.status.history import History, ModeSpan, Plot

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 10, 22
#: colours of a plot's series, in order (after the last, they repeat)
PALETTE = ("#1f6fb2", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d")
MODE_COLOURS = {"NORMAL": "#1e7d3a", "DEGRADED": "#d08a00", "EMERGENCY": "#b3141b"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _span_label(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"-{minutes // 60} h" if minutes >= 120 else f"-{minutes} min"


class _Axes:
    def __init__(self, start: datetime, end: datetime, y_max: float) -> None:
        self.t0, self.t1 = start.timestamp(), max(end.timestamp(), start.timestamp() + 1)
        self.y_max = y_max if y_max > 0 else 1.0

    def x(self, at: datetime) -> float:
        span = WIDTH - LEFT - RIGHT
        return LEFT + span * min(1.0, max(0.0, (at.timestamp() - self.t0) / (self.t1 - self.t0)))

    def y(self, value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - min(1.0, max(0.0, value / self.y_max)))


def _frame(axes: _Axes, unit: str, history: History) -> str:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" fill="#ffffff" '
        'stroke="#d8dce1"/>'
    ]
    for frac in (0.5, 1.0):
        y = axes.y(axes.y_max * frac)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eceff3"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#4b5563">'
            f"{_e(_fmt(axes.y_max * frac))}</text>"
        )
    parts.append(
        f'<text x="{LEFT - 4}" y="{bottom + 4}" text-anchor="end" font-size="10" fill="#4b5563">0</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10" fill="#4b5563">'
        f"{_e(_span_label(axes.t1 - axes.t0))}</text>"
        f'<text x="{right}" y="{HEIGHT - 6}" text-anchor="end" font-size="10" fill="#4b5563">now</text>'
        f'<text x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="10" '
        f'fill="#4b5563">{_e(unit)} · {_e(history.window.label)}</text>'
    )
    return "".join(parts)


def _segments(points: Sequence[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    out: list[list[tuple[float, float]]] = [[]]
    for p in points:
        if p is None:
            if out[-1]:
                out.append([])
        else:
            out[-1].append(p)
    return [s for s in out if s]


def plot_svg(plot: Plot, history: History) -> str:
    """One plot as an ``<svg>`` element (with its legend as a caption under it)."""
    values = [v for s in plot.series for v in s.values if v is not None]
    y_max = max([*values, plot.y_max or 0.0, 1e-9]) * (1.0 if plot.y_max else 1.1)
    axes = _Axes(history.start, history.end, y_max)
    bin_s = history.window.bin_minutes * 60
    body = [_frame(axes, plot.unit, history)]
    legend = []
    groups: dict[str, str] = {}
    for series in plot.series:
        colour = groups.setdefault(series.group or series.name, PALETTE[len(groups) % len(PALETTE)])
        dash = ' stroke-dasharray="4 3"' if series.dashed else ""
        coords: list[tuple[float, float] | None] = []
        dots = []
        for at, value in zip(history.bins, series.values, strict=False):
            if value is None:
                coords.append(None)
                continue
            x = axes.x(at + timedelta(seconds=bin_s / 2))  # the middle of the bin (clamped at now)
            y = axes.y(value)
            coords.append((x, y))
            when = at.strftime("%Y-%m-%d %H:%M UTC")
            dots.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"><title>{_e(series.name)}: '
                f"{_e(_fmt(value))} {_e(plot.unit)} at {_e(when)}</title></circle>"
            )
        for seg in _segments(coords):
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
            body.append(
                f'<polyline data-series="{_e(series.name)}" points="{pts}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5"{dash}/>'
            )
        body.extend(dots)
        legend.append(
            f'<span class="legend-item"><svg width="18" height="8" aria-hidden="true"><line x1="0" y1="4" '
            f'x2="18" y2="4" stroke="{colour}" stroke-width="2"{dash}/></svg> {_e(series.name)}</span>'
        )
    empty = "" if values else '<p class="plot-empty">nothing recorded in this window yet</p>'
    return (
        f'<figure class="plot" id="{_e(plot.id)}"><figcaption>{_e(plot.title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{_e(plot.title)}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
        f'<div class="legend">{"".join(legend)}</div>{empty}</figure>'
    )


def mode_band_svg(spans: list[ModeSpan], history: History) -> str:
    """The mode over the window as coloured bands, each with its mode and times on hover."""
    height = 28
    axes = _Axes(history.start, history.end, 1.0)
    rects = []
    for span in spans:
        x0, x1 = axes.x(span.start), axes.x(span.end)
        colour = MODE_COLOURS.get(span.mode, "#555555")
        when = f"{span.start.strftime('%H:%M:%S')} to {span.end.strftime('%H:%M:%S UTC')}"
        rects.append(
            f'<rect class="mode-span" data-mode="{_e(span.mode)}" x="{x0:.1f}" y="2" '
            f'width="{max(1.0, x1 - x0):.1f}" height="{height - 4}" fill="{colour}">'
            f"<title>{_e(span.mode)} {_e(when)}</title></rect>"
        )
        if x1 - x0 > 60:
            rects.append(
                f'<text x="{x0 + 4:.1f}" y="{height / 2 + 4:.0f}" font-size="11" fill="#ffffff">'
                f"{_e(span.mode)}</text>"
            )
    return (
        '<figure class="plot" id="plot-mode"><figcaption>Operation mode</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
        f'aria-label="Operation mode over the window" xmlns="http://www.w3.org/2000/svg">{"".join(rects)}'
        "</svg></figure>"
    )
