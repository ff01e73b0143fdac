"""Screenshots of the status page in NORMAL and in EMERGENCY for the docs (docs/images/), taken by the same
headless Chromium as the browser test.

The page is served by the real status app (its renderer, headers and CSP) from an illustrative hour of
fleet figures made up here, so the pictures need no running stack and do not change from one run to the
next apart from the clock:

    .venv/bin/python scripts/screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from ultra_tasks.status.history import History, ModeSpan, Window, plots_from_rows  # noqa: E402
from ultra_tasks.status.web import make_app  # noqa: E402

QUEUES = ("llm.high", "llm.default", "llm.low", "ops")


def _rows(now: datetime, incident: bool) -> list[dict[str, str]]:
    """An hour of per-minute rollup hashes: steady traffic, and with ``incident`` a provider outage over
    the last 20 minutes (failures, parked jobs, a growing backlog, the cache carrying more)."""
    rows = []
    calls = {"openai": 0, "anthropic": 0}
    fails = {"openai": 0, "anthropic": 0}
    hits, misses = 0, 0
    for i in range(60):
        at = now - timedelta(minutes=59 - i)
        bad = incident and i >= 40
        wave = 1 + 0.3 * math.sin(i / 6)
        row: dict[str, str] = {"sampled_at": f"{at.timestamp():.3f}"}
        row["jobs:succeeded"] = str(int((14 if bad else 40) * wave))
        row["jobs:failed"] = str(int(9 * wave) if bad else int(i % 7 == 0))
        for b, n in ((2, int(20 * wave)), (3, 12), (5, 4 + (30 if bad else 0))):
            row[f"wait:{b}"] = str(n)
        for b, n in ((4, int(25 * wave)), (5, 10), (7, 3 + (12 if bad else 0))):
            row[f"run:{b}"] = str(n)
        for q, base in zip(QUEUES, (1, 6, 12, 0), strict=True):
            row[f"depth:{q}"] = str(int(base * wave + (4 * (i - 40) if bad and q != "ops" else 0)))
        for q in QUEUES[:3]:
            row[f"parked:{q}"] = str(3 * (i - 40) if bad and q != "llm.high" else 0)
        calls["openai"] += int(30 * wave)
        calls["anthropic"] += int(12 * wave)
        fails["openai"] += 9 if bad else int(i % 9 == 0)
        for name in calls:
            row[f"calls:{name}"] = str(calls[name])
            row[f"failures:{name}"] = str(fails[name])
        hits += 30 if bad else 12
        misses += 10 if bad else 28
        row["hits:memory"], row["misses:memory"] = str(hits), str(misses)
        rows.append(row)
    return rows


def _history(now: datetime, incident: bool) -> History:
    window = Window("1h", 3600, 1, "1 hour")
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    bins = [start + timedelta(minutes=i) for i in range(60)]
    history = History(window, start, now, bins, plots=plots_from_rows(_rows(now, incident), 1))
    if incident:
        degraded, emergency = start + timedelta(minutes=40), start + timedelta(minutes=47)
        history.mode_spans = [
            ModeSpan("NORMAL", start, degraded),
            ModeSpan("DEGRADED", degraded, emergency),
            ModeSpan("EMERGENCY", emergency, now),
        ]
    else:
        history.mode_spans = [ModeSpan("NORMAL", start, now)]
    history.mode_source = "database"
    return history


def _snapshot(now: datetime, incident: bool) -> dict[str, Any]:
    ago = lambda s: (now - timedelta(seconds=s)).isoformat()  # noqa: E731
    provider = {
        "component": "provider:openai",
        "kind": "llm_provider",
        "status": "critical" if incident else "ok",
        "reason": "breaker open: 9 of the last 10 calls failed (HTTP 529)" if incident else "answering",
        "severity": "critical" if incident else "low",
        "at": ago(12),
    }
    components = [
        {"component": "database", "kind": "database", "status": "ok", "reason": "SELECT 1 in 2 ms",
         "severity": "low", "at": ago(12)},
        {"component": "redis", "kind": "redis", "status": "ok", "reason": "PING in 0.4 ms",
         "severity": "low", "at": ago(12)},
        provider,
    ]  # fmt: skip
    breakers = [
        {"name": "openai", "state": "open" if incident else "closed", "failure_count": 9 if incident else 0,
         "successes": 1800, "failures": 190 if incident else 7, "rejections": 420 if incident else 0,
         "success_rate": 0.9 if incident else 0.996, "last_failure_at": ago(20 if incident else 2400)},
        {"name": "anthropic", "state": "closed", "failure_count": 0, "successes": 700, "failures": 1,
         "rejections": 0, "success_rate": 0.998, "last_failure_at": ago(3000)},
    ]  # fmt: skip
    mode = "EMERGENCY" if incident else "NORMAL"
    reasons = [{"component": "provider:openai", "status": "critical", "reason": provider["reason"]}]
    timeline = (
        [
            {"from": "DEGRADED", "to": "EMERGENCY", "reasons": reasons, "at": ago(13 * 60)},
            {"from": "NORMAL", "to": "DEGRADED", "reasons": reasons, "at": ago(20 * 60)},
        ]
        if incident
        else [{"from": "DEGRADED", "to": "NORMAL", "reasons": [], "at": ago(3 * 3600)}]
    )
    return {
        "generated_at": now.isoformat(),
        "mode": {
            "mode": mode,
            "reasons": reasons if incident else [],
            "changed_at": ago(13 * 60 if incident else 3 * 3600),
            "override": None,
            "source": "database",
        },
        "components": components,
        "breakers": breakers,
        "all_providers_down": None,
        "queues": {
            "llm.high": {"depth": 2, "parked": 0},
            "llm.default": {"depth": 86 if incident else 5, "parked": 57 if incident else 0},
            "llm.low": {"depth": 93 if incident else 11, "parked": 57 if incident else 0},
            "ops": {"depth": 0, "parked": 0},
        },
        "queue_stats": {
            "window_s": 300.0,
            "processed": 410 if incident else 1950,
            "succeeded": 365 if incident else 1948,
            "failed": 45 if incident else 2,
            "processing_rate_per_s": 1.37 if incident else 6.5,
            "success_rate": 0.89 if incident else 0.999,
            "avg_wait_s": 41.0 if incident else 0.4,
            "max_wait_s": 310.0 if incident else 2.1,
        },
        "job_table": {
            "rows": 182_000,
            "rows_estimated": True,
            "size_bytes": 96_000_000,
            "oldest_created_at": ago(7 * 86400),
            "oldest_finished_at": ago(7 * 86400 - 60),
            "retention_s": 7 * 86400,
        },
        "cache": {"memory": {"hits": 5200, "misses": 9100, "hit_rate": 0.36}},
        "timeline": timeline,
        "errors": {},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(app: web.Application, port: int, ready: threading.Event) -> None:
    async def run() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(run())


def shoot(chromium: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ultra-shot-") as profile:
        done = subprocess.run(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile}", f"--screenshot={out}", "--window-size=1300,1500", url],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed on {url}:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    if not os.access(args.chromium, os.X_OK):
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    for name, incident in (("status-normal.png", False), ("status-emergency.png", True)):
        app = make_app(
            snapshot=lambda incident=incident: _snapshot(now, incident),
            history=lambda _window, incident=incident: _history(now, incident),
        )
        port = _free_port()
        ready = threading.Event()
        threading.Thread(target=_serve, args=(app, port, ready), daemon=True).start()
        ready.wait(10)
        shoot(args.chromium, f"http://127.0.0.1:{port}/", args.out / name)
        print(args.out / name)


if __name__ == "__main__":
    main()
