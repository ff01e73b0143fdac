"""The status page in a real headless Chromium (Debian's `chromium`), in NORMAL and in EMERGENCY: the banner
says the mode, the component table lists the recorded components, check texts are escaped, and a screenshot
of each is kept (the test's tmp dir and var/screenshots/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from status_server import ROOT, StatusServer, force_normal_mode

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "var" / "screenshots"
#: a reason text as a check might report it: markup in it must show as text, never run
HOSTILE_REASON = '<script>window.pwned=1</script><b>bold</b> & "quoted"'


@pytest.fixture(scope="module")
def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (apt-get install chromium; scripts/test installs it on CI)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def status_server(
    redis_client: Any, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    server = StatusServer(tmp_path_factory.mktemp("status-server")).start()
    yield server
    server.stop()


@pytest.fixture
def components() -> Iterator[list[str]]:
    """Components this test records; reported ok again and the mode back to NORMAL afterwards."""
    from ultra_tasks import SystemOperationMode

    suffix = uuid.uuid4().hex[:6]
    names = [f"page-db-{suffix}", f"page-provider-{suffix}"]
    force_normal_mode()
    yield names
    mode = SystemOperationMode()
    for name in names:
        mode.record_component(name, "ok", "test over", kind="test")
    force_normal_mode()


class _Dom(HTMLParser):
    """What the test reads of the DOM Chromium dumps: elements by id and the rows of each table."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.tags: set[str] = set()
        self._tbody = 0
        self._open: list[tuple[str, dict[str, Any]]] = []
        self._table: list[str] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "tbody":
            self._tbody += 1
        element = {"tag": tag, "attrs": a, "text": []}
        if "id" in a:
            self.by_id[a["id"]] = element
        if tag in ("meta", "br", "img", "link", "input"):
            return
        self._open.append((tag, element))
        if tag == "table":
            self._table.append(a.get("id", ""))
        elif tag == "tr" and self._table and self._tbody:
            self._row = {"attrs": a, "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.rows.setdefault(self._table[-1], []).append(self._row)
            self._row = None
        elif tag == "table" and self._table:
            self._table.pop()
        elif tag == "tbody":
            self._tbody -= 1

    def handle_data(self, data: str) -> None:
        for _, element in self._open:
            element["text"].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def text(self, element_id: str) -> str:
        return " ".join("".join(self.by_id[element_id]["text"]).split())

    def body_rows(self, table_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.rows.get(table_id, [])
            if r["cells"] and "empty" not in r["attrs"].get("class", "")
        ]


def _chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def _load(chromium: str, url: str, tmp_path: Path, shot_name: str) -> _Dom:
    """The page's DOM as Chromium rendered it, and a screenshot kept in tmp_path and var/screenshots/."""
    dumped = _chromium(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    shot = tmp_path / shot_name
    taken = _chromium(
        chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,1100", url
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, SCREENSHOTS / shot_name)
    dom = _Dom()
    dom.feed(dumped.stdout)
    return dom


def test_status_page_shows_normal_then_emergency_banner_and_component_table_in_chromium(
    chromium: str, status_server: Any, components: list[str], tmp_path: Path
) -> None:
    from ultra_tasks import SystemOperationMode

    db_name, provider_name = components
    mode = SystemOperationMode()
    # Given every component is healthy and the mode NORMAL
    mode.record_component(db_name, "ok", "SELECT 1 in 3 ms", kind="test", severity="low")
    mode.record_component(provider_name, "ok", "answering", kind="test", severity="low")
    mode.clear_override()
    assert mode.current_mode == "NORMAL"

    # When the page is loaded in Chromium
    dom = _load(chromium, status_server.url + "/", tmp_path, "status-normal.png")

    # Then the banner says NORMAL and the table lists the components as ok
    banner = dom.by_id["mode-banner"]
    assert "mode-normal" in banner["attrs"]["class"].split()
    assert dom.text("mode-name") == "NORMAL"
    assert "mode-emergency" not in banner["attrs"]["class"]
    rows = {r["attrs"].get("data-component"): r for r in dom.body_rows("components")}
    assert rows[db_name]["cells"][2] == "ok"
    assert rows[provider_name]["cells"][2] == "ok"
    assert "status-ok" in rows[provider_name]["attrs"]["class"]
    assert dom.by_id["queues"] and dom.by_id["timeline"] and dom.by_id["breakers"]

    # When a component goes critical with markup in its reason and the mode is EMERGENCY
    mode.record_component(provider_name, "critical", HOSTILE_REASON, kind="test", severity="critical")
    mode.set_override("EMERGENCY", 60, reason="browser test")
    assert mode.current_mode == "EMERGENCY"
    dom = _load(chromium, status_server.url + "/", tmp_path, "status-emergency.png")

    # Then the banner is the emergency one, the component row is critical, and the reason is shown as text
    banner = dom.by_id["mode-banner"]
    assert "mode-emergency" in banner["attrs"]["class"].split()
    assert banner["attrs"]["data-mode"] == "EMERGENCY"
    assert dom.text("mode-name") == "EMERGENCY"
    assert "override" in dom.text("mode-banner").lower()
    rows = {r["attrs"].get("data-component"): r for r in dom.body_rows("components")}
    assert rows[provider_name]["cells"][2] == "critical"
    assert "status-critical" in rows[provider_name]["attrs"]["class"]
    assert rows[provider_name]["cells"][4] == HOSTILE_REASON  # the text itself, not elements
    assert rows[db_name]["cells"][2] == "ok"
    assert "script" not in dom.tags and "b" not in dom.tags
    timeline = dom.body_rows("timeline")
    assert timeline and timeline[0]["cells"][2] == "EMERGENCY"  # newest first
    assert (SCREENSHOTS / "status-normal.png").exists() and (SCREENSHOTS / "status-emergency.png").exists()


def test_status_page_reloads_itself_sends_a_strict_content_policy_and_its_json_and_probes_answer(
    status_server: Any,
) -> None:
    status, headers, body = status_server.get("/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]  # no script may run at all
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b'http-equiv="refresh"' in body
    status, headers, body = status_server.get("/status.json")
    snap = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert snap["mode"]["mode"] in ("NORMAL", "DEGRADED", "EMERGENCY") and snap["errors"] == {}
    assert set(snap["queues"]) == {"llm.high", "llm.default", "llm.low", "ops"}
    status, _, body = status_server.get("/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    assert status_server.get("/healthz")[0] == 200


def test_plots_draw_a_short_run_of_jobs_and_a_degraded_episode_in_chromium_within_the_csp(
    chromium: str, status_server: Any, components: list[str], worker_factory: Any, tmp_path: Path
) -> None:
    import re
    import time

    from ultra_tasks import SystemOperationMode, submit

    # Given a short run of jobs on a real worker
    worker_factory(concurrency=4)
    for handle in [submit(f"browser plot {i} {time.time()}", model="gpt-4o-mini") for i in range(5)]:
        handle.result(timeout=60)
    # and a DEGRADED episode that is over
    mode = SystemOperationMode()
    mode.set_override("DEGRADED", 60, reason="browser plot test")
    assert mode.current_mode == "DEGRADED"
    time.sleep(1.5)
    force_normal_mode()
    time.sleep(2.5)  # the worker's buffered counts reach Redis within a second or two

    # When the page for the last 15 minutes is loaded in Chromium, with its console on stderr
    url = status_server.url + "/?window=15m"
    dumped = _chromium(
        chromium, tmp_path / "profile-plots", "--enable-logging=stderr", "--v=0", "--dump-dom", url
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    html = dumped.stdout

    # Then nothing on the page breaks its content security policy
    assert "Content Security Policy" not in dumped.stderr, dumped.stderr[-3000:]
    # every plot is an <svg> with points, the jobs plot counts the run
    for plot_id in ("plot-jobs", "plot-queues", "plot-latency", "plot-providers", "plot-cache"):
        figure = re.search(rf'<figure class="plot" id="{plot_id}">(.*?)</figure>', html, re.S)
        assert figure and "<svg" in figure.group(1), plot_id
    jobs = re.search(r'id="plot-jobs">(.*?)</figure>', html, re.S)
    assert jobs and "<polyline" in jobs.group(1) and "<circle" in jobs.group(1)
    succeeded = [float(v) for v in re.findall(r"<title>succeeded: ([0-9.]+) ", jobs.group(1))]
    assert sum(succeeded) >= 5
    latency = re.search(r'id="plot-latency">(.*?)</figure>', html, re.S)
    assert latency and re.search(r"<title>wait p50: [0-9.]+ ", latency.group(1))
    # and the mode band shows the DEGRADED episode between NORMAL stretches
    band = re.search(r'id="plot-mode">(.*?)</figure>', html, re.S)
    assert band, html[:2000]
    modes = re.findall(r'<rect class="mode-span" data-mode="([A-Z]+)"', band.group(1))
    assert "DEGRADED" in modes and modes[-1] == "NORMAL", modes
    shot = tmp_path / "status-plots.png"
    taken = _chromium(
        chromium, tmp_path / "profile-plots-shot", f"--screenshot={shot}", "--window-size=1280,1400", url
    )
    assert taken.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
