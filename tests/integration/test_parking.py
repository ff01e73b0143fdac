"""Parked jobs in Redis: due order, at-least-once release, leases that lapse, and what wakes releasers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ultra_tasks import keys
from ultra_tasks.jobs import parking
from ultra_tasks.jobs.parking import Parking, Releaser, _wakes

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lot(redis_client: Any) -> Iterator[Parking]:
    # these tests park made-up jobs: no worker's releaser may find them later
    names = (keys.parked_jobs(), keys.parked_inflight(), *(keys.parked(q) for q in keys.LLM_QUEUES))
    redis_client.delete(*names)
    yield Parking(redis_client)
    redis_client.delete(*names)


def test_claim_takes_only_due_jobs_high_queue_first(lot: Parking) -> None:
    now = time.time()
    lot.park("low-due", "llm.low", {"n": 1}, now - 5, "breaker open")
    lot.park("high-due", "llm.high", {"n": 2}, now - 1, "breaker open")
    lot.park("default-later", "llm.default", {"n": 3}, now + 60, "EMERGENCY")
    claimed = lot.claim()
    assert [(j.job_id, j.queue, j.payload, j.reason) for j in claimed] == [
        ("high-due", "llm.high", {"n": 2}, "breaker open"),
        ("low-due", "llm.low", {"n": 1}, "breaker open"),
    ]
    assert lot.depths() == {"llm.high": 0, "llm.default": 1, "llm.low": 0}
    assert lot.claim() == []  # claimed jobs are not handed out twice while their lease holds


def test_release_all_takes_jobs_before_they_are_due(lot: Parking) -> None:
    lot.park("a", "llm.default", {}, time.time() + 3600, "EMERGENCY")
    assert [j.job_id for j in lot.claim(release_all=True)] == ["a"]


def test_done_forgets_the_job_but_not_a_newer_parking_of_it(lot: Parking, redis_client: Any) -> None:
    lot.park("j", "llm.low", {"v": 1}, time.time() - 1, "first")
    assert [j.job_id for j in lot.claim()] == ["j"]
    # the job was released, ran, and was parked again before its releaser said done
    lot.park("j", "llm.low", {"v": 2}, time.time() + 60, "second")
    lot.done("j")
    assert lot.due_at("j") is not None
    assert json.loads(redis_client.hget(keys.parked_jobs(), "j"))["reason"] == "second"
    lot.claim(release_all=True)
    lot.done("j")
    assert redis_client.hget(keys.parked_jobs(), "j") is None
    assert redis_client.zcard(keys.parked_inflight()) == 0


def test_a_release_whose_releaser_died_is_handed_out_again_after_its_lease(
    lot: Parking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parking, "RELEASE_LEASE_S", 0.3)
    lot.park("orphan", "llm.default", {}, time.time() - 1, "breaker open")
    assert [j.job_id for j in lot.claim()] == ["orphan"]
    # its releaser never publishes nor says done
    assert lot.claim() == []
    time.sleep(0.4)
    assert [j.job_id for j in lot.claim()] == ["orphan"]


def test_release_publishes_each_due_job_once_and_keeps_those_whose_publish_failed(
    lot: Parking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parking, "RELEASE_LEASE_S", 0.3)
    for i in range(5):
        lot.park(f"j{i}", "llm.low", {"i": i}, time.time() - 1, "quota")
    published: list[str] = []

    def publish(job_id: str, queue: str, payload: dict[str, Any]) -> bool:
        if job_id == "j3" and "j3-failed" not in published:
            published.append("j3-failed")
            return False  # the broker refused it this time
        published.append(job_id)
        return True

    assert lot.release(publish) == 4
    time.sleep(0.4)
    assert lot.release(publish) == 1
    assert sorted(published) == ["j0", "j1", "j2", "j3", "j3-failed", "j4"]
    assert lot.depths() == {"llm.high": 0, "llm.default": 0, "llm.low": 0}


def test_parking_refuses_a_queue_that_is_not_an_llm_queue(lot: Parking) -> None:
    with pytest.raises(ValueError, match="'ops'"):
        lot.park("x", "ops", {}, time.time(), "no")


@pytest.mark.parametrize(
    ("channel", "event", "wakes"),
    [
        (keys.breaker_events, {"name": "openai", "from": "half-open", "to": "closed"}, True),
        (keys.breaker_events, {"name": "openai", "from": "open", "to": "half-open"}, True),
        (keys.breaker_events, {"name": "openai", "from": "closed", "to": "open"}, False),
        (keys.mode_events, {"from": "EMERGENCY", "to": "DEGRADED"}, True),
        (keys.mode_events, {"from": "DEGRADED", "to": "NORMAL"}, True),
        (keys.mode_events, {"from": "NORMAL", "to": "EMERGENCY"}, False),
        (keys.parked_wake, {"reason": "operator"}, True),
    ],
)
def test_what_wakes_releasers(channel: Any, event: dict[str, Any], wakes: bool) -> None:
    assert _wakes({"channel": channel(), "data": json.dumps(event)}) is wakes


def test_a_releaser_releases_due_jobs_and_everything_on_a_wake(lot: Parking, redis_client: Any) -> None:
    published: list[str] = []
    releaser = Releaser(redis_client, lambda job_id, q, p: published.append(job_id) or True, poll_s=0.2)
    releaser.start()
    try:
        lot.park("soon", "llm.default", {}, time.time() + 0.3, "breaker open")
        lot.park("later", "llm.low", {}, time.time() + 3600, "EMERGENCY")
        deadline = time.monotonic() + 5
        while "soon" not in published and time.monotonic() < deadline:
            time.sleep(0.05)
        assert published == ["soon"]
        time.sleep(0.2)  # the releaser is subscribed by now
        lot.wake("test")
        deadline = time.monotonic() + 5
        while "later" not in published and time.monotonic() < deadline:
            time.sleep(0.05)
        assert published == ["soon", "later"]
    finally:
        releaser.stop()
        releaser.join(5)
