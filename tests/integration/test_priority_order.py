"""Jobs queued while no worker runs are taken strictly high, then default, then low."""

from __future__ import annotations

from typing import Any

import pytest

from ultra_tasks import submit

pytestmark = pytest.mark.timeout(120)


def test_single_threaded_worker_takes_backlog_high_then_default_then_low(
    worker_factory: Any, broker_queues: Any
) -> None:
    # Given a backlog in all three queues, submitted low first so arrival order is the opposite of priority
    # (an earlier test of the session may have left messages queued: they run in their own order too)
    before = broker_queues.llm_depth()
    handles = []
    for priority in ("low", "default", "high") * 4:
        handles.append((priority, submit(f"{priority} job", model="gpt-4o-mini", priority=priority)))
    assert broker_queues.llm_depth() - before == 12

    # When one single-threaded worker starts
    worker_factory(concurrency=1)
    records = [(priority, handle.result(timeout=60) and handle.record()) for priority, handle in handles]

    # Then completion order follows priority strictly
    order = [priority for priority, record in sorted(records, key=lambda pr: pr[1]["started_at"])]
    assert order == ["high"] * 4 + ["default"] * 4 + ["low"] * 4
