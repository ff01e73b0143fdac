"""docs/configuration.md is generated from the settings model; these tests keep the two in step."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from pydantic import Field

from ultra_tasks.config import Settings
from ultra_tasks.config_doc import DOC_PATH, REGENERATE, render, rows

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_matches_the_settings_model() -> None:
    current = (ROOT / DOC_PATH).read_text(encoding="utf-8")
    expected = render()
    if current != expected:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                fromfile=str(DOC_PATH),
                tofile="generated",
                n=0,
            )
        )
        pytest.fail(f"{DOC_PATH} is out of date: run {REGENERATE}\n{diff[:4000]}")


def test_every_setting_has_a_row_with_a_meaning() -> None:
    by_variable = {row.variable: row for row in rows()}
    assert set(by_variable) == {name.upper() for name in Settings.model_fields}
    missing = sorted(v for v, row in by_variable.items() if not row.meaning)
    assert not missing, f"add a #: comment above these settings in ultra_tasks/config.py: {missing}"


def test_secret_defaults_are_never_printed() -> None:
    page = render()
    assert "ultra:ultra" not in page  # FLOWER_BASIC_AUTH's development value
    row = {r.variable: r for r in rows()}
    assert row["FLOWER_BASIC_AUTH"].default == "(a development value; masked)"
    assert row["OPENAI_API_KEY"].default == "(unset)"
    assert row["ULTRA_SECRET_KEY"].default == "generated"


def test_a_changed_default_or_bound_changes_the_page() -> None:
    # Given a settings model whose one default and one bound differ from today's
    class Changed(Settings):
        #: consecutive failures, fleet-wide, that open a breaker
        circuit_breaker_failure_threshold: int = Field(7, ge=2)

    # Then its page differs from the committed one, so the first test would fail on it
    row = {r.variable: r for r in rows(Changed)}["CIRCUIT_BREAKER_FAILURE_THRESHOLD"]
    assert (row.default, row.bounds) == ("`7`", "≥ 2")
    assert render(Changed) != (ROOT / DOC_PATH).read_text(encoding="utf-8")


def test_types_defaults_and_bounds_are_read_from_the_fields() -> None:
    row = {r.variable: r for r in rows()}
    assert (row["CIRCUIT_BREAKER_SYNC_INTERVAL"].type, row["CIRCUIT_BREAKER_SYNC_INTERVAL"].bounds) == (
        "number",
        "> 0, ≤ 60",
    )
    assert row["CIRCUIT_BREAKER_REDIS_DOWN_POLICY"].bounds == "one of `local`, `fail_open`, `fail_closed`"
    assert row["QUEUE_SHED_AT"].default == "`low=0.7,default=0.9,high=1`"
    assert row["BROKER_URL"].default == "REDIS_URL"
    assert row["MODE_EMERGENCY_RUN_QUEUES"].type == "comma-separated list"
