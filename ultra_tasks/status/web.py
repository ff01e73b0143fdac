"""The status web app (aiohttp): a page for people, its JSON, Prometheus metrics, and probes.

- ``/``: the current mode with a banner (``#mode-banner``, class ``mode-normal``, ``mode-degraded`` or
  ``mode-emergency``), plots over a window (``?window=15m|1h|24h``, default 1h; anything else is a 400):
  jobs finished per minute by status, queue depth and parked jobs, p50/p95 wait and run time, provider
  calls and failures, cache hit rate, and a band of the mode (status/history.py, drawn as inline SVG by
  status/plots.py), then the component table (``#components``), breaker states (``#breakers``), queue
  depths with parked jobs (``#queues``), queue statistics, fleet cache counters and the timeline of mode
  changes (``#timeline``). Times show relative ("12 s ago") with the exact time on hover.
  It reloads itself every ``REFRESH_S`` seconds; everything shown is HTML-escaped (component reasons are
  text from checks and providers).
- ``/status.json``: the fleet snapshot (ultra_tasks/fleet/) as JSON (ultra_tasks/status/snapshot.py).
- ``/metrics``: the fleet's Prometheus metrics (ultra_tasks/metrics/).
- ``/healthz``: 200 while this process serves; ``/readyz``: 200 only when Redis and the database answer
  within ``READY_TIMEOUT_S``, else 503 with the reason in JSON.

Access: with ``STATUS_TOKEN`` set, every path but ``/healthz`` (a bare liveness answer, for probes) needs
``Authorization: Bearer <token>``, or HTTP Basic with the token as password (what a browser sends after
its login prompt, also on the page's reloads); anything else gets 401. There is no ``?token=`` parameter:
a token in a URL ends up in browser history, proxy logs and Referer headers. Without a token the server
may only listen on loopback (``serve`` refuses otherwise, naming STATUS_TOKEN).

``ultra status-server --host 127.0.0.1 --port 8088`` runs it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from typing import Any

from aiohttp import web

from ultra_tasks.fleet import Store, read_fleet
from ultra_tasks.metrics import FleetCollector, fleet_registry
from ultra_tasks.metrics.rollup import record_sample, sample_from_snapshot
from ultra_tasks.redis_client import shared_redis
from ultra_tasks.status.history import WINDOWS, History, Window, parse_window
from ultra_tasks.status.plots import mode_band_svg, plot_svg
from ultra_tasks.status.snapshot import snapshot_json
from ultra_tasks.status.times import time_html

log = logging.getLogger(__name__)

#: seconds between the page's reloads
REFRESH_S = 5
#: seconds /readyz waits for Redis and for the database
READY_TIMEOUT_S = 2.0
#: seconds a page waits for the plots' history (the snapshot bounds itself: FLEET_READ_TIMEOUT)
HISTORY_TIMEOUT_S = 15.0
BANNER_TEXT = {
    "NORMAL": "All systems operating normally.",
    "DEGRADED": "Some components are unhealthy; the fleet runs with reduced service.",
    "EMERGENCY": "Critical components are down; only essential work runs.",
    "UNKNOWN": "Neither the database nor Redis could be read.",
}
SECURITY_HEADERS = {
    # no script at all, inline styles only: a reason text that slipped past escaping could still not run
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: paths served without the token: a bare liveness answer that says nothing about the fleet
OPEN_PATHS = frozenset({"/healthz"})

SnapshotReader = Callable[[], dict[str, Any]]
HistoryReader = Callable[[Window], History]
SNAPSHOT_KEY: web.AppKey[SnapshotReader] = web.AppKey("snapshot")
HISTORY_KEY: web.AppKey[HistoryReader] = web.AppKey("history")
COLLECTOR_KEY = web.AppKey("collector", FleetCollector)
TOKEN_KEY: web.AppKey[str | None] = web.AppKey("token")
# Basic too, so a browser shows its login prompt (any user name, the token as password)
_CHALLENGE = 'Bearer realm="ultra-tasks status", Basic realm="ultra-tasks status", charset="UTF-8"'


def _default_snapshot() -> dict[str, Any]:
    snapshot = read_fleet()
    if not snapshot.store_failed(Store.REDIS):
        # what the page just read is this minute's sample for the plots (beat samples too, unwatched)
        try:
            record_sample(shared_redis(), sample_from_snapshot(snapshot))
        except Exception as exc:  # a gap in the plots, never a failed page
            log.info("rollup sample not recorded: %s", exc)
    return snapshot_json(snapshot)


def _default_history(window: Window) -> History:
    from ultra_tasks.status.history import read_history

    return read_history(window)


# --- handlers -------------------------------------------------------------------------------------------
async def _snapshot(request: web.Request) -> dict[str, Any]:
    # the fleet read returns by its own deadline, with what it could read
    snap: dict[str, Any] = await asyncio.to_thread(request.app[SNAPSHOT_KEY])
    return snap


async def page(request: web.Request) -> web.Response:
    try:
        window = parse_window(request.query.get("window"))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"400: {exc}\n") from None
    snap = await _snapshot(request)
    read = request.app[HISTORY_KEY]
    history: History | str
    try:
        history = await asyncio.wait_for(asyncio.to_thread(read, window), HISTORY_TIMEOUT_S)
    except TimeoutError:
        history = f"the history was not read within {HISTORY_TIMEOUT_S:g}s"
    return web.Response(text=render_page(snap, history), content_type="text/html", charset="utf-8")


async def status_json(request: web.Request) -> web.Response:
    snap = await _snapshot(request)
    return web.json_response(snap, dumps=lambda obj: json.dumps(obj, default=str))


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    # the fleet read returns by its own deadline, with what it could read
    body = await asyncio.to_thread(generate_latest, fleet_registry(request.app[COLLECTOR_KEY]))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    redis_check, db_check = await asyncio.gather(
        _bounded("redis", _ping_redis), _bounded("database", _ping_database)
    )
    checks = {"redis": redis_check, "database": db_check}
    ready = all(c["ok"] for c in checks.values())
    body = {"ready": ready, "checks": checks}
    if not ready:
        body["reason"] = "; ".join(f"{name}: {c['error']}" for name, c in checks.items() if not c["ok"])
    return web.json_response(body, status=200 if ready else 503)


async def _bounded(name: str, check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.to_thread(check), READY_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {READY_TIMEOUT_S:g}s"}
    except Exception as exc:
        return {"ok": False, "error": " ".join(str(exc).split()) or type(exc).__name__}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _ping_redis() -> None:
    from ultra_tasks.redis_client import shared_redis

    shared_redis().ping()


def _ping_database() -> None:
    from sqlalchemy import text

    from ultra_tasks.db.engine import transaction

    with transaction() as conn:
        conn.execute(text("SELECT 1"))


def _presented_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


@web.middleware
async def _token_required(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    if token and request.path not in OPEN_PATHS:
        presented = _presented_token(request)
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            return web.Response(
                status=401,
                text="401: this status server requires its STATUS_TOKEN (Authorization: Bearer <token>)\n",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def make_app(
    *,
    snapshot: SnapshotReader | None = None,
    collector: FleetCollector | None = None,
    token: str | None = None,
    history: HistoryReader | None = None,
) -> web.Application:
    """The app; ``snapshot`` (a no-argument function returning the snapshot dict) is replaceable;
    ``token``, when set, is required on every path but OPEN_PATHS."""
    # _headers outermost, so a 401 carries the security headers too
    app = web.Application(middlewares=[_headers, _token_required])
    app[TOKEN_KEY] = token or None
    app[SNAPSHOT_KEY] = snapshot or _default_snapshot
    app[HISTORY_KEY] = history or _default_history
    app[COLLECTOR_KEY] = collector or FleetCollector()
    app.router.add_get("/", page)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def serve(host: str = "127.0.0.1", port: int = 8088, token: str | None = None) -> None:
    """Run the status server until interrupted; ``token`` defaults to STATUS_TOKEN. Beyond loopback a
    token is required (ConfigurationError naming STATUS_TOKEN otherwise)."""
    from ultra_tasks.config import get_settings
    from ultra_tasks.redaction import install_log_redaction
    from ultra_tasks.security import check_status_exposure

    token = token if token is not None else get_settings().status_token
    check_status_exposure(host, token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    access = "STATUS_TOKEN required" if token else "no token: loopback only"
    log.info("status page on http://%s:%d/ (JSON /status.json, metrics /metrics; %s)", host, port, access)
    web.run_app(make_app(token=token), host=host, port=port, print=None, access_log=None)


# --- the page -------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _css_word(value: Any) -> str:
    """A class-name-safe word (statuses are from a small known set; anything else becomes 'unknown')."""
    word = str(value or "unknown").lower()
    return word if word.replace("-", "").isalpha() else "unknown"


def _table(table_id: str, headers: list[str], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr class="empty"><td colspan="{len(headers)}">{_e(empty)}</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _reason_text(reason: Any) -> str:
    if isinstance(reason, dict):
        return f"{reason.get('component', '?')}: {reason.get('reason', '')}"
    return str(reason)


def _banner(mode: dict[str, Any], now: datetime) -> str:
    name = str(mode.get("mode") or "UNKNOWN").upper()
    if name not in BANNER_TEXT:
        name = "UNKNOWN"
    reasons = "".join(f"<li>{_e(_reason_text(r))}</li>" for r in mode.get("reasons") or [])
    override = mode.get("override")
    extra = ""
    if isinstance(override, dict):
        extra = f'<p id="mode-override">Operator override: {_e(override.get("mode"))} until '
        extra += f"{time_html(override.get('until'), now)}</p>"
    since = time_html(mode.get("changed_at"), now)
    changed = f'<p class="since">since {since}</p>' if mode.get("changed_at") else ""
    return (
        f'<header id="mode-banner" class="mode-banner mode-{name.lower()}" role="status" '
        f'data-mode="{_e(name)}"><h1><span id="mode-name">{_e(name)}</span></h1>'
        f'<p id="mode-summary">{_e(BANNER_TEXT[name])}</p>{changed}{extra}'
        f'<ul id="mode-reasons">{reasons}</ul></header>'
    )


def _components(snap: dict[str, Any], now: datetime) -> str:
    rows = [
        f'<tr class="status-{_css_word(c.get("status"))}" data-component="{_e(c.get("component"))}">'
        f"<td>{_e(c.get('component'))}</td><td>{_e(c.get('kind'))}</td>"
        f'<td class="status">{_e(c.get("status"))}</td><td>{_e(c.get("severity"))}</td>'
        f"<td>{_e(c.get('reason'))}</td><td>{time_html(c.get('at'), now)}</td></tr>"
        for c in snap.get("components") or []
    ]
    missing = "not available (database unreadable)" if "components" not in snap else "no component reported"
    return _table("components", ["component", "kind", "status", "severity", "reason", "at"], rows, missing)


def _breakers(snap: dict[str, Any], now: datetime) -> str:
    rows = []
    for b in snap.get("breakers") or []:
        rate = b.get("success_rate")
        rows.append(
            f'<tr class="breaker-{_css_word(b.get("state"))}" data-breaker="{_e(b.get("name"))}">'
            f'<td>{_e(b.get("name"))}</td><td class="state">{_e(b.get("state"))}</td>'
            f"<td>{_e(b.get('failure_count'))}</td><td>{_e(b.get('successes'))}</td>"
            f"<td>{_e(b.get('failures'))}</td><td>{_e(b.get('rejections'))}</td>"
            f"<td>{'' if rate is None else _e(f'{rate:.1%}')}</td>"
            f"<td>{time_html(b.get('last_failure_at'), now)}</td></tr>"
        )
    missing = "not available (Redis unreadable)" if "breakers" not in snap else "no breaker used yet"
    headers = ["breaker", "state", "consecutive failures", "successes", "failures", "rejections"]
    table = _table("breakers", [*headers, "success rate", "last failure"], rows, missing)
    notice = snap.get("all_providers_down")
    return table + (f'<p id="all-providers-down">{_e(notice)}</p>' if notice else "")


def _deployments(snap: dict[str, Any]) -> str:
    rows = [
        f'<tr class="status-{_css_word(d.get("health"))}" data-deployment="{_e(d.get("name"))}">'
        f"<td>{_e(d.get('name'))}</td><td>{_e(d.get('kind'))}</td>"
        f"<td>{_e(', '.join(d.get('models') or []))}</td><td>{_e(d.get('weight'))}</td>"
        f'<td class="status">{_e(d.get("health") or "-")}</td><td>{_e(d.get("breaker") or "-")}</td></tr>'
        for d in snap.get("deployments") or []
    ]
    headers = ["deployment", "kind", "models", "weight", "health", "breaker"]
    return _table("deployments", headers, rows, "no deployment configured")


def _admission(snap: dict[str, Any]) -> str:
    """The admission bound's fill against each priority's threshold (QUEUE_MAX_SIZE, QUEUE_SHED_AT)."""
    a = snap.get("admission")
    rows: list[str] = []
    if isinstance(a, dict):
        held = a.get("by_priority") or {}
        for priority, t in (a.get("thresholds") or {}).items():
            share = f"{float(t.get('share') or 0):.0%}"
            rows.append(
                f'<tr data-priority="{_e(priority)}"><td>{_e(priority)}</td>'
                f'<td class="held">{_e(held.get(priority, 0))}</td>'
                f'<td class="limit">{_e(t.get("limit"))}</td><td>{_e(share)}</td>'
                f'<td class="room">{_e(t.get("room"))}</td></tr>'
            )
    headers = ["priority", "held", "refused from", "share of QUEUE_MAX_SIZE", "room"]
    return _table("admission", headers, rows, "not available (Redis unreadable)")


def _usd(value: Any) -> str:
    return "unknown" if value is None else f"${float(value):,.6f}"


def _budgets(snap: dict[str, Any]) -> str:
    """Each tenant's spend (the ledger's) against its budget in the current period."""
    rows = []
    for b in snap.get("budgets") or []:
        used = b.get("used")
        cap = b.get("hard_cap_usd")
        rows.append(
            f'<tr data-tenant="{_e(b.get("tenant"))}"><td>{_e(b.get("tenant"))}</td>'
            f"<td>{_e(b.get('period'))}</td>"
            f'<td class="spent">{_e(_usd(b.get("spent_usd")))}</td><td>{_e(_usd(b.get("usd")))}</td>'
            f"<td>{_e('-' if cap is None else _usd(cap))}</td>"
            f'<td class="used">{_e("-" if used is None else f"{float(used):.0%}")}</td></tr>'
        )
    headers = ["tenant", "period", "spent", "budget", "hard cap", "used"]
    empty = "no tenant has a budget" if "budgets" in snap else "not available (database unreadable)"
    return _table("budgets", headers, rows, empty)


def _queues(snap: dict[str, Any]) -> str:
    queues = snap.get("queues") or {}
    rows = [
        f'<tr data-queue="{_e(name)}"><td>{_e(name)}</td><td class="depth">{_e(q.get("depth"))}</td>'
        f'<td class="parked">{_e(q.get("parked"))}</td></tr>'
        for name, q in queues.items()
        if isinstance(q, dict)
    ]
    missing = "not available (Redis or broker unreadable)"
    table = _table("queues", ["queue", "waiting", "parked"], rows, missing) + _admission(snap)
    stats = snap.get("queue_stats")
    if not isinstance(stats, dict):
        return table
    labels = [
        ("processed", "jobs ended"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("processing_rate_per_s", "jobs / s"),
        ("success_rate", "success rate"),
        ("avg_wait_s", "average wait (s)"),
        ("max_wait_s", "longest wait (s)"),
    ]
    cells = "".join(
        f'<tr data-stat="{key}"><th>{_e(label)}</th><td>{_e(_number(stats.get(key)))}</td></tr>'
        for key, label in labels
    )
    window = _e(_number(stats.get("window_s")))
    return f'{table}<table id="queue-stats"><caption>last {window} s</caption><tbody>{cells}</tbody></table>'


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _job_table(snap: dict[str, Any], now: datetime) -> str:
    table = snap.get("job_table")
    if not isinstance(table, dict):
        return _table("job-table", ["job table"], [], "not available (database unreadable)")
    rows = table.get("rows")
    retention = table.get("retention_s")
    labels = [
        ("rows", f"~{rows}" if table.get("rows_estimated") else _number(rows)),
        ("size_bytes", _number(table.get("size_bytes"))),
        ("oldest_created_at", time_html(table.get("oldest_created_at"), now, empty="n/a")),
        ("oldest_finished_at", time_html(table.get("oldest_finished_at"), now, empty="n/a")),
        ("retention_s", "forever" if retention is None else _duration(retention)),
    ]
    names = {
        "rows": "jobs kept",
        "size_bytes": "size on disk (bytes)",
        "oldest_created_at": "oldest kept job (created)",
        "oldest_finished_at": "oldest kept finished job",
        "retention_s": "finished jobs kept for (JOB_RETENTION)",
    }
    shown = {"oldest_created_at", "oldest_finished_at"}  # already HTML
    cells = "".join(
        f'<tr data-stat="{key}"><th>{_e(names[key])}</th><td>{value if key in shown else _e(value)}</td></tr>'
        for key, value in labels
    )
    return f'<table id="job-table"><tbody>{cells}</tbody></table>'


def _duration(seconds: Any) -> str:
    from ultra_tasks.durations import format_duration

    return format_duration(float(seconds)) if isinstance(seconds, (int, float)) else _number(seconds)


def _cache(snap: dict[str, Any]) -> str:
    cache = snap.get("cache") or {}
    levels = cache.get("levels", cache) if isinstance(cache, dict) else {}
    rows = [
        f'<tr data-level="{_e(level)}"><td>{_e(level)}</td><td>{_e(s.get("hits"))}</td>'
        f"<td>{_e(s.get('misses'))}</td><td>{_e(_number(s.get('hit_rate')))}</td></tr>"
        for level, s in levels.items()
        if isinstance(s, dict)
    ]
    return _table("cache", ["level", "hits", "misses", "hit rate"], rows, "no cache counters reported yet")


def _timeline(snap: dict[str, Any], now: datetime) -> str:
    rows = [
        f'<tr class="to-{_css_word(str(t.get("to", "")).lower())}"><td>{time_html(t.get("at"), now)}</td>'
        f"<td>{_e(t.get('from'))}</td><td>{_e(t.get('to'))}</td>"
        f"<td>{_e('; '.join(_reason_text(r) for r in t.get('reasons') or []))}</td></tr>"
        for t in snap.get("timeline") or []
    ]
    missing = "not available (database unreadable)" if "timeline" not in snap else "no mode change yet"
    return _table("timeline", ["at", "from", "to", "reasons"], rows, missing)


def _errors(snap: dict[str, Any]) -> str:
    errors = snap.get("errors") or {}
    if not errors:
        return ""
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in errors.items())
    return f'<section id="errors" class="errors"><h2>Unreadable right now</h2><ul>{items}</ul></section>'


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{padding:0 24px 24px}
.mode-banner{padding:16px 24px;color:#fff}
.mode-banner h1{margin:0;font-size:28px;letter-spacing:.05em}
.mode-banner p,.mode-banner ul{margin:4px 0}
.mode-normal{background:#1e7d3a}.mode-degraded{background:#b86e00}.mode-emergency{background:#b3141b}
.mode-unknown{background:#555}
section{margin-top:20px}h2{font-size:16px;margin:0 0 6px}
table{border-collapse:collapse;background:#fff;min-width:50%}
th,td{border:1px solid #d8dce1;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#eceff3}
.status-ok .status,.breaker-closed .state{color:#1e7d3a;font-weight:600}
.status-degraded .status,.breaker-half-open .state{color:#b86e00;font-weight:600}
.status-critical .status,.breaker-open .state,.breaker-forced-open .state{color:#b3141b;font-weight:600}
.errors{background:#fff4e5;border:1px solid #f0c27b;padding:8px 12px}
footer{color:#6b7480;margin-top:24px}
time{border-bottom:1px dotted #9aa3ad}
.plots{display:flex;flex-wrap:wrap;gap:12px}
figure.plot{margin:0;background:#fff;border:1px solid #d8dce1;padding:6px 8px}
figure.plot figcaption{font-weight:600;margin-bottom:4px}
#plot-mode{margin-bottom:12px}
.legend{font-size:12px;color:#4b5563;max-width:560px}.legend-item{margin-right:10px;white-space:nowrap}
.plot-empty,.note{color:#6b7480;font-size:12px;margin:2px 0}
#windows{margin-bottom:8px}
"""


def _plots(history: History | str | None) -> str:
    if history is None:
        return ""
    if isinstance(history, str):
        return f'<section id="plots"><h2>Over time</h2><p class="errors">{_e(history)}</p></section>'
    links = " · ".join(
        f'<strong aria-current="true">{_e(w.label)}</strong>'
        if w.name == history.window.name
        else f'<a href="?window={_e(w.name)}">{_e(w.label)}</a>'
        for w in WINDOWS.values()
    )
    missing = "".join(
        f"<li><strong>{_e(store)}</strong>: {_e(why)}</li>" for store, why in sorted(history.errors.items())
    )
    notes = f'<ul class="errors">{missing}</ul>' if missing else ""
    band = mode_band_svg(history.mode_spans, history) if history.mode_spans else ""
    if history.mode_source == "rollup":
        band += '<p class="note">mode as sampled each minute (the mode history is unreadable)</p>'
    plots = "".join(plot_svg(plot, history) for plot in history.plots)
    return (
        f'<section id="plots" data-window="{_e(history.window.name)}"><h2>Over the last '
        f'{_e(history.window.label)}</h2><nav id="windows">window: {links}</nav>{notes}{band}'
        f'<div class="plots">{plots}</div></section>'
    )


def _now(snap: dict[str, Any]) -> datetime:
    from ultra_tasks.status.times import parse_iso

    return parse_iso(snap.get("generated_at")) or datetime.now(UTC)


def render_page(snap: dict[str, Any], history: History | str | None = None) -> str:
    """The status page for ``snap`` (a fleet snapshot) and ``history`` (the plots' window, or why it could
    not be read; None leaves the plots out), every value escaped."""
    mode = snap.get("mode") if isinstance(snap.get("mode"), dict) else {}
    name = _e(str((mode or {}).get("mode") or "UNKNOWN").upper())
    now = _now(snap)
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ultra-tasks: {name}</title><style>{STYLE}</style></head><body>"
        f"{_banner(mode or {}, now)}<main>{_errors(snap)}{_plots(history)}"
        f"<section><h2>Components</h2>{_components(snap, now)}</section>"
        f"<section><h2>Provider deployments</h2>{_deployments(snap)}</section>"
        f"<section><h2>Circuit breakers</h2>{_breakers(snap, now)}</section>"
        f"<section><h2>Queues</h2>{_queues(snap)}</section>"
        f"<section><h2>Job table</h2>{_job_table(snap, now)}</section>"
        f"<section><h2>Cache</h2>{_cache(snap)}</section>"
        f"<section><h2>Budgets</h2>{_budgets(snap)}</section>"
        f"<section><h2>Mode changes</h2>{_timeline(snap, now)}</section>"
        f'<footer>generated <span id="generated-at">{time_html(snap.get("generated_at"), now)}</span>; '
        f'reloads every {REFRESH_S} s; <a href="status.json">JSON</a> · <a href="metrics">metrics</a>'
        "</footer></main></body></html>\n"
    )
