"""QUEUE_SHED_AT: each priority's share of QUEUE_MAX_SIZE, parsed, checked and turned into thresholds."""

from __future__ import annotations

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.errors import ConfigurationError, QueueFullError
from ultra_tasks.jobs.admission import threshold, thresholds


@pytest.fixture(autouse=True)
def _no_shares_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUEUE_SHED_AT", raising=False)
    monkeypatch.delenv("QUEUE_MAX_SIZE", raising=False)


def test_low_is_shed_from_70_percent_default_from_90_and_high_only_at_the_bound_by_default() -> None:
    settings = load_settings(queue_max_size=50)
    limits = {p: t.limit for p, t in thresholds(settings).items()}
    assert limits == {"high": 50, "default": 45, "low": 35}


def test_shares_are_read_as_priority_pairs_and_a_priority_left_out_keeps_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUEUE_SHED_AT", "low=0.5, default=0.8")
    shed = load_settings().queue_shed_at
    assert (shed.low, shed.default, shed.high) == (0.5, 0.8, 1.0)
    monkeypatch.setenv("QUEUE_SHED_AT", '{"low": 0.25}')
    assert load_settings().queue_shed_at.low == 0.25


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("low=0", "the share of low must be above 0 and at most 1"),
        ("high=1.5", "the share of high must be above 0 and at most 1"),
        ("low=0.95", "shares must not fall as priority rises"),
        ("urgent=1", "expected priority=share pairs"),
        ("low=lots", "the share of low is not a number"),
    ],
)
def test_a_malformed_share_stops_startup_naming_queue_shed_at(
    monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    monkeypatch.setenv("QUEUE_SHED_AT", value)
    with pytest.raises(ConfigurationError, match="QUEUE_SHED_AT") as caught:
        load_settings()
    assert why in str(caught.value)


def test_a_threshold_rounds_down_but_an_empty_system_admits_every_priority() -> None:
    settings = load_settings()
    assert threshold("low", 10, settings).limit == 7
    assert threshold("low", 1, settings).limit == 1


def test_queue_full_error_keeps_its_two_argument_form_and_carries_the_threshold_that_applied() -> None:
    legacy = QueueFullError(3, 3)
    assert (legacy.depth, legacy.limit, legacy.threshold, legacy.priority) == (3, 3, 3, None)
    assert "3 jobs waiting, limit 3 (QUEUE_MAX_SIZE)" in str(legacy)
    shed = QueueFullError(35, 50, priority="low", threshold=35, share=0.7)
    assert "low is refused from 35 (70% of QUEUE_MAX_SIZE 50, QUEUE_SHED_AT)" in str(shed)
    assert (shed.priority, shed.threshold, shed.share) == ("low", 35, 0.7)
