"""The fleet snapshot as rich tables, for `ultra status`.

Every value is shown as plain text (``Text``, or ``markup=False``), never read as rich markup: reasons,
component and breaker names come from checks, providers and users, and ``[/x]`` in them would crash the
command.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from ultra_tasks.durations import format_duration

_MODE_STYLE = {"NORMAL": "bold green", "DEGRADED": "bold yellow", "EMERGENCY": "bold red"}
_STATUS_STYLE = {"ok": "green", "degraded": "yellow", "critical": "red"}
_BREAKER_STYLE = {"closed": "green", "half-open": "yellow", "open": "red", "forced-open": "red"}
#: mode changes shown (the JSON has up to 50)
TIMELINE_SHOWN = 5


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"


def _styled(text: Any, styles: dict[str, str]) -> Text:
    return Text(str(text), style=styles.get(str(text), ""))


def render_snapshot(snap: dict[str, Any], console: Console) -> None:
    """Mode and reasons, then a table per part the snapshot has (``errors`` are the caller's to show)."""
    for part in snapshot_renderables(snap):
        console.print(part, highlight=False)


def snapshot_renderables(snap: dict[str, Any]) -> list[RenderableType]:
    """What ``render_snapshot`` prints, as renderables (``ultra status --watch`` redraws them in place)."""
    out: list[RenderableType] = []
    mode = snap["mode"]
    line = Text.assemble("mode: ", _styled(mode["mode"], _MODE_STYLE))
    if mode.get("override"):
        line.append(f"  (operator override until {mode['override']['until']})")
    if mode.get("changed_at"):
        line.append(f"  since {mode['changed_at']}")
    if mode.get("source") == "redis":
        line.append("  (from the Redis mirror)", style="dim")
    out.append(line)
    for reason in mode.get("reasons") or []:
        out.append(Text(f"  {reason.get('component')}: {reason.get('status')} - {reason.get('reason')}"))

    if "components" in snap and not snap["components"]:
        out.append(Text("components: none reported yet (health checks run on beat)"))
    elif "components" in snap:
        table = Table("component", "kind", "status", "reason", "at", title="components")
        for c in snap["components"]:
            table.add_row(
                Text(str(c["component"])),
                Text(str(c["kind"])),
                _styled(c["status"], _STATUS_STYLE),
                Text(str(c["reason"])),
                Text(str(c["at"])),
            )
        out.append(table)

    if "breakers" in snap and not snap["breakers"]:
        out.append(Text("circuit breakers: none used yet"))
    elif "breakers" in snap:
        table = Table(
            "breaker", "state", "consecutive failures", "successes", "failures", "rejections", "success rate",
            title="circuit breakers",
        )  # fmt: skip
        for b in snap["breakers"]:
            table.add_row(
                Text(str(b["name"])),
                _styled(b["state"], _BREAKER_STYLE),
                str(b["failure_count"]),
                str(b["successes"]),
                str(b["failures"]),
                str(b["rejections"]),
                _pct(b["success_rate"]),
            )
        out.append(table)
        if snap.get("all_providers_down"):
            out.append(Text(str(snap["all_providers_down"]), style="yellow"))

    if snap.get("deployments"):
        table = Table(
            "deployment", "kind", "models", "weight", "health", "breaker", title="provider deployments"
        )
        for d in snap["deployments"]:
            table.add_row(
                Text(str(d["name"])),
                Text(str(d["kind"])),
                Text(", ".join(d["models"])),
                f"{d['weight']:g}",
                _styled(d.get("health") or "-", _STATUS_STYLE),
                _styled(d.get("breaker") or "-", _BREAKER_STYLE),
            )
        out.append(table)

    if "queues" in snap:
        table = Table("queue", "waiting", "parked", title="queues")
        for name, q in snap["queues"].items():
            table.add_row(Text(str(name)), str(q["depth"]), str(q["parked"]))
        out.append(table)

    if "admission" in snap:
        a = snap["admission"]
        table = Table(
            "priority",
            "held",
            "refused from",
            "share",
            "room",
            title=f"admission: {a['held']} of QUEUE_MAX_SIZE {a['max_size']} held ({a['fill']:.0%} full)",
        )
        for priority, t in a["thresholds"].items():
            table.add_row(
                priority,
                str(a["by_priority"].get(priority, 0)),
                str(t["limit"]),
                f"{t['share']:.0%}",
                str(t["room"]),
            )
        out.append(table)

    if "queue_stats" in snap:
        s = snap["queue_stats"]
        table = Table(
            "processed", "succeeded", "failed", "per second", "success rate", "avg wait", "max wait",
            title=f"last {s['window_s']:g}s",
        )  # fmt: skip
        table.add_row(
            str(s["processed"]),
            str(s["succeeded"]),
            str(s["failed"]),
            f"{s['processing_rate_per_s']:.3g}",
            _pct(s["success_rate"]),
            _secs(s["avg_wait_s"]),
            _secs(s["max_wait_s"]),
        )
        out.append(table)

    if "job_table" in snap:
        t = snap["job_table"]
        rows = f"~{t['rows']}" if t.get("rows_estimated") else str(t["rows"])
        keep = "forever" if t.get("retention_s") is None else format_duration(t["retention_s"])
        table = Table(
            "jobs kept", "size on disk", "oldest kept job", "oldest finished", "retention", title="job table"
        )
        size = t.get("size_bytes")
        table.add_row(
            rows,
            "-" if size is None else f"{size / 1_048_576:.1f} MiB",
            Text(str(t.get("oldest_created_at") or "-")),
            Text(str(t.get("oldest_finished_at") or "-")),
            keep,
        )
        out.append(table)

    cache = snap.get("cache") or {}
    if cache:
        table = Table("cache level", "hits", "misses", "hit rate", title="cache (fleet-wide)")
        for level, c in cache.items():
            table.add_row(
                Text(str(level)), str(c.get("hits", 0)), str(c.get("misses", 0)), _pct(c.get("hit_rate"))
            )
        out.append(table)
    elif "redis" not in snap["errors"]:
        out.append(Text("cache: no fleet-wide counters reported yet"))

    budgets = snap.get("budgets") or []
    if budgets:
        table = Table("tenant", "period", "spent", "budget", title="budgets (this period)")
        for b in budgets:
            spent = b.get("spent_usd")
            table.add_row(
                Text(str(b.get("tenant"))),
                str(b.get("period")),
                "unknown" if spent is None else f"${spent:.6f}",
                f"${b.get('usd')}",
            )
        out.append(table)

    if snap.get("timeline"):
        out.append(Text("mode changes, newest first:"))
    for change in (snap.get("timeline") or [])[:TIMELINE_SHOWN]:
        out.append(Text(f"  {change['at']}  {change['from']} -> {change['to']}"))
    return out
