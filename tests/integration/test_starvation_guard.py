"""Strict priority, with a guard: a low job waiting past QUEUE_STARVATION_AGE moves one queue up."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ultra_tasks import submit
from ultra_tasks.config import reset_settings
from ultra_tasks.health import tasks as ops_tasks

pytestmark = pytest.mark.timeout(120)


def test_an_old_low_job_moves_up_and_runs_before_newer_low_jobs(
    worker_factory: Any, broker_queues: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an old low job and, later, a backlog of newer low jobs
    old = submit("old low job", model="gpt-4o-mini", priority="low")
    time.sleep(1.2)
    newer = [submit(f"newer low job {i}", model="gpt-4o-mini", priority="low") for i in range(4)]
    # When the sweeper runs with a starvation age of one second
    monkeypatch.setenv("QUEUE_STARVATION_AGE", "1")
    reset_settings()
    ops_tasks.sweep()
    assert old.record()["queue"] == "llm.default"
    assert all(h.record()["queue"] == "llm.low" for h in newer)
    # Then a single-threaded worker runs the old job first, and still only once
    worker_factory(concurrency=1)
    for h in [old, *newer]:
        h.result(timeout=60)
    started = sorted([old, *newer], key=lambda h: h.record()["started_at"])
    assert started[0].id == old.id
    time.sleep(0.5)  # its leftover message in llm.low is taken and finds the job done
    assert broker_queues.llm_depth() == 0
    assert old.record()["attempts"] == 1
