"""deploy/grafana/ultra-tasks.json queries only metrics the status server's /metrics really serves: every
metric name in every panel's PromQL is checked against a scrape taken after jobs ran through a real worker
(some families, such as the wait gauges, exist only once jobs ended in the window)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from status_server import StatusServer, force_normal_mode

from ultra_tasks import submit

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("closed_provider_breakers")]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ultra-tasks.json"
#: PromQL words that are not metric names
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left"}
_KEYWORDS |= {"group_right", "inf", "nan", "Inf", "NaN"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and ranges left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$:.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, called = match.group(1), match.group(2)
        if not called and word not in _KEYWORDS:
            names.add(word)
    return names


def exposed_names(text: str) -> set[str]:
    """Every name a Prometheus text exposition serves: its samples' names and every declared family (with
    the series names a histogram or summary family has)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + suffix for suffix in _SUFFIXES.get(kind.strip(), ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def unknown_metrics(dashboard: dict[str, Any], exposed: set[str]) -> dict[str, set[str]]:
    """Per panel title, the metric names its queries use that ``exposed`` lacks."""
    out: dict[str, set[str]] = {}
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            missing = metric_names(target.get("expr", "")) - exposed
            if missing:
                out.setdefault(panel["title"], set()).update(missing)
    return out


# --- the dashboard itself ------------------------------------------------------------------------------


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, provider) (rate(ultra_job_latency_seconds_bucket{model!="x"}'
        "[$__rate_interval])))"
    )
    assert metric_names(expr) == {"ultra_job_latency_seconds_bucket"}
    assert metric_names("ultra_operation_mode == 1 and on (mode) ultra_mode_x offset 5m") == {
        "ultra_operation_mode",
        "ultra_mode_x",
    }


def test_every_panel_queries_ultra_metrics_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    queried = [p for p in panels(dashboard) if p["type"] != "row"]
    assert queried, "the dashboard has no panels"
    for panel in queried:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        assert names, f"panel {panel['title']!r} queries no metric"
        assert all(n.startswith("ultra_") for n in names), (panel["title"], names)


def test_a_made_up_metric_in_a_panel_is_reported() -> None:
    dashboard = load_dashboard()
    exposed = set().union(*(metric_names(t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])))
    assert unknown_metrics(dashboard, exposed) == {}
    first = next(p for p in panels(dashboard) if p.get("targets"))
    first["targets"].append({"refId": "Z", "expr": "rate(ultra_made_up_total[5m])"})
    assert unknown_metrics(dashboard, exposed) == {first["title"]: {"ultra_made_up_total"}}


# --- against a real scrape -----------------------------------------------------------------------------


@pytest.fixture
def server(redis_client: Any, database: str, tmp_path: Path) -> Iterator[StatusServer]:
    force_normal_mode()
    status_server = StatusServer(tmp_path).start()
    yield status_server
    status_server.stop()
    force_normal_mode()


def test_every_metric_a_panel_queries_is_served_by_metrics(
    server: StatusServer, worker_factory: Any, fake_provider: Any
) -> None:
    # Given jobs that ran through a real worker, one of them answered from the cache
    worker_factory(concurrency=2)
    tag = uuid.uuid4().hex[:8]
    results = [
        submit(f"dashboard {tag}", model="gpt-4o-mini", temperature=0).result(timeout=60) for _ in "ab"
    ]
    assert results[-1].cached

    # When /metrics is scraped (workers flush their counts into Redis about once a second)
    dashboard = load_dashboard()
    deadline = time.monotonic() + 30
    while True:
        status, _, body = server.get("/metrics")
        assert status == 200, body[-2000:]
        missing = unknown_metrics(dashboard, exposed_names(body.decode()))
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    # Then every metric name a panel queries is there
    assert not missing, f"panels query metrics /metrics does not serve: {missing}"
