"""Durations as operators write them, for JOB_RETENTION and `ultra jobs purge --older-than`."""

from __future__ import annotations

import pytest

from ultra_tasks.config import load_settings
from ultra_tasks.durations import format_duration, parse_duration
from ultra_tasks.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400), ("600", 600)],
)
def test_a_duration_with_a_unit_or_a_number_of_seconds_is_read(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30x", "-5d", "d", "thirty days", ""])
def test_a_malformed_duration_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="30d, 12h, 90m"):
        parse_duration(text)


def test_job_retention_defaults_to_thirty_days_and_zero_or_none_keeps_jobs_forever() -> None:
    assert load_settings().job_retention == 30 * 86400
    assert load_settings(job_retention="12h").job_retention == 43200
    for forever in ("0", "none", "forever", 0):
        assert load_settings(job_retention=forever).job_retention is None


def test_a_malformed_job_retention_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOB_RETENTION", "a month")
    with pytest.raises(ConfigurationError, match="JOB_RETENTION='a month'"):
        load_settings()


def test_the_outcome_buffer_ttl_is_in_minutes_and_at_least_one() -> None:
    assert load_settings().job_outcome_buffer_ttl == 60
    with pytest.raises(ConfigurationError, match="JOB_OUTCOME_BUFFER_TTL"):
        load_settings(job_outcome_buffer_ttl=0)


def test_durations_are_shown_in_their_largest_whole_unit() -> None:
    assert [format_duration(s) for s in (30 * 86400, 14 * 86400, 5400, 45, 90.5)] == [
        "30d",
        "2w",
        "90m",
        "45s",
        "90.5s",
    ]
