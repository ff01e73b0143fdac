"""Mode metrics computed from transitions and component statuses recorded at known times, on a real
database of each kind (a private PostgreSQL and an SQLite file), so every figure is checked exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from ultra_tasks.db import engine as db
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.mode.metrics import component_history, mode_changes, mode_metrics, time_in_modes

pytestmark = [pytest.mark.timeout(60)]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database of its own, migrated and empty."""
    if request.param == "postgresql":
        url = request.getfixturevalue("private_postgres").url
    else:
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
    engine = db.get_engine(url)
    upgrade_schema(engine)
    yield engine
    db.dispose_engines()


@pytest.fixture
def history_db(empty_db: Engine) -> Engine:
    """NORMAL → DEGRADED at 0 s → EMERGENCY at 100 → DEGRADED at 160 → NORMAL at 200 → DEGRADED at 1000,
    and component statuses at known times (one after the 'now' used below)."""
    steps = [(0, "NORMAL", "DEGRADED"), (100, "DEGRADED", "EMERGENCY"), (160, "EMERGENCY", "DEGRADED")]
    steps += [(200, "DEGRADED", "NORMAL"), (1000, "NORMAL", "DEGRADED")]
    statuses = [("openai", "ok", 10), ("openai", "critical", 20), ("openai", "critical", 30)]
    statuses += [("openai", "ok", 1050), ("anthropic", "ok", 5), ("openai", "critical", 2000)]
    with db.transaction(empty_db) as conn:
        for seconds, old, new in steps:
            reason = [{"component": "openai", "reason": f"step at {seconds}"}]
            conn.execute(
                insert(ModeTransition.__table__).values(
                    from_mode=old, to_mode=new, reasons=reason, at=at(seconds)
                )
            )
        conn.execute(
            insert(OperationModeRecord.__table__).values(
                id=1, mode="DEGRADED", reasons=[], changed_at=at(1000), better_checks=0
            )
        )
        for component, status, seconds in statuses:
            conn.execute(
                insert(ComponentStatus.__table__).values(
                    component=component,
                    kind="llm_provider",
                    status=status,
                    reason=f"{status} at {seconds}",
                    severity="high" if status == "critical" else "low",
                    at=at(seconds),
                )
            )
    return empty_db


NOW = at(1100)


def test_time_in_each_mode_over_all_history(history_db: Engine) -> None:
    figures = time_in_modes(now=NOW, engine=history_db)
    assert figures["since"] == T0.isoformat() and figures["until"] == NOW.isoformat()
    assert figures["modes"] == {
        "NORMAL": {"total_s": 800.0, "stays": 1, "average_stay_s": 800.0, "share": 800 / 1100},
        "DEGRADED": {"total_s": 240.0, "stays": 3, "average_stay_s": 80.0, "share": 240 / 1100},
        "EMERGENCY": {"total_s": 60.0, "stays": 1, "average_stay_s": 60.0, "share": 60 / 1100},
    }
    assert figures["current"] == {"mode": "DEGRADED", "since": at(1000).isoformat()}


def test_time_in_each_mode_counts_only_the_part_of_a_stay_inside_the_window(history_db: Engine) -> None:
    # the window starts at 100 s, the instant EMERGENCY began
    figures = time_in_modes(window_s=1000, now=NOW, engine=history_db)
    assert {m: (f["total_s"], f["stays"]) for m, f in figures["modes"].items()} == {
        "NORMAL": (800.0, 1),
        "DEGRADED": (140.0, 2),
        "EMERGENCY": (60.0, 1),
    }
    assert figures["modes"]["DEGRADED"]["average_stay_s"] == 70.0
    # a window inside one stay: the mode it started in, for the whole window
    inside = time_in_modes(window_s=50, now=NOW, engine=history_db)
    assert inside["modes"]["DEGRADED"] == {"total_s": 50.0, "stays": 1, "average_stay_s": 50.0, "share": 1.0}
    assert inside["modes"]["NORMAL"] == {"total_s": 0.0, "stays": 0, "average_stay_s": None, "share": 0.0}


def test_changes_are_counted_per_window_and_by_transition(history_db: Engine) -> None:
    everything = mode_changes(now=NOW, engine=history_db)
    assert everything["changes"] == 5
    assert everything["by_transition"] == {
        "NORMAL->DEGRADED": 2,
        "DEGRADED->EMERGENCY": 1,
        "EMERGENCY->DEGRADED": 1,
        "DEGRADED->NORMAL": 1,
    }
    assert everything["entered"] == {"NORMAL": 1, "DEGRADED": 3, "EMERGENCY": 1}
    assert everything["last_change_at"] == at(1000).isoformat()
    window = mode_changes(window_s=1000, now=NOW, engine=history_db)  # (100 s, 1100 s]: 160, 200, 1000
    assert window["changes"] == 3 and window["since"] == at(100).isoformat()
    assert mode_changes(window_s=50, now=NOW, engine=history_db)["changes"] == 0
    # 'now' in the past sees only what had happened by then
    assert mode_changes(now=at(150), engine=history_db)["changes"] == 2


def test_component_history_lists_recent_statuses_per_component_newest_first(history_db: Engine) -> None:
    figures = component_history(limit=2, now=NOW, engine=history_db)
    openai = figures["components"]["openai"]
    assert [(h["status"], h["at"]) for h in openai["history"]] == [
        ("ok", at(1050).isoformat()),
        ("critical", at(30).isoformat()),
    ]
    assert openai["latest"] == {
        "status": "ok",
        "reason": "ok at 1050",
        "severity": "low",
        "kind": "llm_provider",
        "at": at(1050).isoformat(),
    }
    assert openai["status_counts"] == {"ok": 2, "critical": 2}  # the status after 'now' is not counted
    assert [h["at"] for h in figures["components"]["anthropic"]["history"]] == [at(5).isoformat()]

    recent = component_history(window_s=100, now=NOW, engine=history_db)
    assert list(recent["components"]) == ["openai"]
    only = component_history(component="anthropic", now=NOW, engine=history_db)
    assert list(only["components"]) == ["anthropic"]


def test_an_empty_history_reports_zeros_not_errors(empty_db: Engine) -> None:
    figures = mode_metrics(window_s=600, now=NOW, engine=empty_db)
    assert figures["changes"]["changes"] == 0 and figures["changes_all_time"]["last_change_at"] is None
    assert figures["time_in_modes_all_time"]["current"] == {"mode": "NORMAL", "since": None}
    assert figures["time_in_modes"]["modes"]["NORMAL"]["total_s"] == 600.0
    assert figures["components"]["components"] == {}


def test_bad_arguments_say_what_is_wrong(empty_db: Engine) -> None:
    with pytest.raises(ValueError, match="window_s"):
        mode_changes(window_s=0, engine=empty_db)
    with pytest.raises(ValueError, match="limit"):
        component_history(limit=0, engine=empty_db)


def test_metrics_are_json_safe(history_db: Engine) -> None:
    import json

    figures: dict[str, Any] = mode_metrics(window_s=1000, now=NOW, engine=history_db)
    assert json.loads(json.dumps(figures)) == figures
