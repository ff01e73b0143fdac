"""The status page rendered from snapshots the fleet can produce, including partial ones during outages."""

from __future__ import annotations

from typing import Any

from ultra_tasks.status.web import render_page


def _snapshot(**parts: Any) -> dict[str, Any]:
    return {"generated_at": "2026-01-01T00:00:00+00:00", "errors": {}, **parts}


def test_page_without_redis_says_which_parts_are_missing_and_escapes_the_error() -> None:
    snap = _snapshot(
        mode={"mode": "DEGRADED", "reasons": [{"component": "redis", "reason": "down <i>now</i>"}]},
        components=[],
        timeline=[],
        errors={"redis": "127.0.0.1:6379: <b>Connection refused</b>"},
    )
    page = render_page(snap)
    assert 'id="mode-banner" class="mode-banner mode-degraded"' in page
    assert 'id="errors"' in page and "&lt;b&gt;Connection refused&lt;/b&gt;" in page
    assert "<b>Connection" not in page and "<i>now</i>" not in page
    assert "not available (Redis unreadable)" in page  # breakers
    assert "not available (Redis or broker unreadable)" in page  # queues


def test_page_with_an_unknown_or_hostile_mode_shows_the_unknown_banner() -> None:
    page = render_page(_snapshot(mode={"mode": '"><script>x()</script>', "reasons": []}))
    assert "mode-unknown" in page and "<script>" not in page
    unreadable = {"redis": "a", "database": "b"}
    page = render_page(_snapshot(mode={"mode": "UNKNOWN", "reasons": []}, errors=unreadable))
    assert 'data-mode="UNKNOWN"' in page and "not available (database unreadable)" in page


def test_component_row_classes_only_take_known_words() -> None:
    comps = [{"component": "x", "status": 'ok" onclick="evil', "reason": "r"}]
    page = render_page(_snapshot(mode={"mode": "NORMAL"}, components=comps))
    assert 'class="status-unknown"' in page and 'onclick="evil' not in page


def test_page_shows_each_provider_deployment_with_its_last_probe_and_breaker() -> None:
    deployment = {
        "name": "azure-<eu>",
        "kind": "azure_openai",
        "models": ["gpt-4o"],
        "weight": 2,
        "health": "critical",
        "breaker": "open",
    }
    page = render_page(_snapshot(mode={"mode": "NORMAL", "reasons": []}, deployments=[deployment]))
    assert 'id="deployments"' in page and 'data-deployment="azure-&lt;eu&gt;"' in page
    assert "<td>azure_openai</td><td>gpt-4o</td><td>2</td>" in page and 'class="status-critical"' in page
