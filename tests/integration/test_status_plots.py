"""The status page's plots over a window, from the per-minute rollup that a real worker fills while it runs
jobs and that the page and beat's health check sample: served by a real `ultra status-server`."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import _free_port
from status_server import StatusServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("database", "redis_client")]

PLOTS = ("plot-jobs", "plot-queues", "plot-latency", "plot-providers", "plot-cache")


@pytest.fixture(scope="module")
def status_server(
    redis_client: Any, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StatusServer]:
    server = StatusServer(tmp_path_factory.mktemp("status-plots")).start()
    yield server
    server.stop()


def figure(html: str, plot_id: str) -> str:
    match = re.search(rf'<figure class="plot" id="{plot_id}">(.*?)</figure>', html, re.S)
    assert match, f"no {plot_id} on the page"
    return match.group(1)


def plotted_values(html: str, plot_id: str, series: str) -> list[float]:
    """The values of one series, read back from its points' hover titles."""
    body = figure(html, plot_id)
    return [
        float(v) for v in re.findall(rf"<title>{re.escape(series)}: ([0-9.e+-]+) ", body)
    ]  # fmt: skip


def test_page_plots_jobs_waits_run_times_and_queues_after_a_short_run_of_jobs(
    worker_factory: Any, status_server: StatusServer
) -> None:
    from ultra_tasks import submit

    # Given a worker that ran a few jobs
    worker_factory(concurrency=4)
    handles = [submit(f"plot me {i} {time.time()}", model="gpt-4o-mini") for i in range(6)]
    for handle in handles:
        handle.result(timeout=60)
    time.sleep(2.5)  # the worker flushes its buffered counts at least once a second

    # When the page is loaded for the last 15 minutes
    status, headers, body = status_server.get("/?window=15m")
    html = body.decode()

    # Then every plot is an inline SVG, and the finished jobs, their waits and run times are plotted
    assert status == 200, html[:500]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for plot_id in PLOTS:
        assert "<svg" in figure(html, plot_id)
    assert sum(plotted_values(html, "plot-jobs", "succeeded")) >= 6
    assert "<polyline" in figure(html, "plot-jobs")
    assert plotted_values(html, "plot-latency", "wait p50")
    assert plotted_values(html, "plot-latency", "run time p95")
    # the page sampled the queues as it rendered: depth per queue, parked per LLM queue
    for queue in ("llm.high", "llm.default", "llm.low"):
        assert plotted_values(html, "plot-queues", queue)
        assert plotted_values(html, "plot-queues", f"{queue} parked")
    # the window links and the current choice
    assert 'data-window="15m"' in html and 'href="?window=24h"' in html and 'href="?window=1h"' in html
    # times are relative, with the exact time on hover
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">', html)


def test_rollup_minutes_expire_a_little_after_the_longest_window(redis_client: Any) -> None:
    from ultra_tasks import keys
    from ultra_tasks.metrics.buffer import MetricsBuffer
    from ultra_tasks.metrics.rollup import FleetSample, count_job, minute_of, record_sample

    buffer = MetricsBuffer()
    count_job("succeeded", 0.2, 1.5, buffer=buffer)
    assert buffer.flush()
    record_sample(redis_client, FleetSample(mode="NORMAL", depths={"llm.default": 3}))
    key = keys.rollup_minute(minute_of(time.time()))
    ttl = redis_client.ttl(key)
    assert 24 * 3600 < ttl <= 25 * 3600
    row = redis_client.hgetall(key)
    assert int(row["jobs:succeeded"]) >= 1 and row["depth:llm.default"] == "3" and row["mode"] == "NORMAL"


def test_an_unknown_window_is_a_400_naming_the_choices(status_server: StatusServer) -> None:
    status, _, body = status_server.get("/?window=3d")
    assert status == 400
    assert b"15m, 1h, 24h" in body and b"'3d'" in body
    assert status_server.get("/?window=24h")[0] == 200


def test_page_says_the_history_is_unreadable_while_redis_is_down() -> None:
    import redis

    from ultra_tasks.status.history import parse_window, read_history
    from ultra_tasks.status.web import render_page

    dead = redis.Redis(port=_free_port(), socket_connect_timeout=0.5)
    history = read_history(parse_window("1h"), client=dead)
    html = render_page({"mode": {"mode": "NORMAL"}, "errors": {}}, history)
    assert "redis" in history.errors
    assert 'id="plots"' in html and "refused" in html.lower()
    # the mode band still comes from the database
    assert history.mode_source == "database" and 'id="plot-mode"' in html
