"""Parked jobs in Redis: due order, at-least-once release, leases that lapse, and what wakes releasers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ultra_tasks import keys
from ultra_tasks.jobs import parking
from ultra_tasks.jobs.parking import (
    ALL,
    AT_ONCE,
    CAUSE_MODE,
    CAUSE_PROVIDER,
    CAUSE_SLOT,
    PROBES,
    RAMP,
    Parking,
    Releaser,
    released_by,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lot(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Parking]:
    # These tests park made-up jobs and publish made-up events: a namespace of their own keeps the
    # session's workers (their releasers hear the namespace's channels) from taking either.
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("ULTRA_REDIS_NAMESPACE", f"ultra-test-parking-{uuid.uuid4().hex[:8]}")
    reset_settings()
    yield Parking(redis_client)
    redis_client.delete(*keys.parking_keys())


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


def test_releasing_all_takes_jobs_before_they_are_due(lot: Parking) -> None:
    lot.park("a", "llm.default", {}, time.time() + 3600, "EMERGENCY")
    assert [j.job_id for j in lot.claim(causes=ALL)] == ["a"]


def test_done_forgets_the_job_but_not_a_newer_parking_of_it(lot: Parking, redis_client: Any) -> None:
    lot.park("j", "llm.low", {"v": 1}, time.time() - 1, "first")
    assert [j.job_id for j in lot.claim()] == ["j"]
    # the job was released, ran, and was parked again before its releaser said done
    lot.park("j", "llm.low", {"v": 2}, time.time() + 60, "second")
    lot.done("j")
    assert lot.due_at("j") is not None
    assert json.loads(redis_client.hget(keys.parked_jobs(), "j"))["reason"] == "second"
    lot.claim(causes=ALL)
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
    ("channel", "event", "releases", "how"),
    [
        (
            keys.breaker_events,
            {"name": "openai", "from": "half-open", "to": "closed"},
            (CAUSE_PROVIDER,),
            RAMP,
        ),
        (
            keys.breaker_events,
            {"name": "openai", "from": "open", "to": "half-open"},
            (CAUSE_PROVIDER,),
            PROBES,
        ),
        (keys.breaker_events, {"name": "openai", "from": "open", "to": "disabled"}, (CAUSE_PROVIDER,), RAMP),
        (keys.breaker_events, {"name": "openai", "from": "closed", "to": "open"}, (), AT_ONCE),
        (keys.mode_events, {"from": "EMERGENCY", "to": "DEGRADED"}, (CAUSE_MODE,), RAMP),
        (keys.mode_events, {"from": "EMERGENCY", "to": "NORMAL"}, (CAUSE_MODE, CAUSE_SLOT), RAMP),
        (keys.mode_events, {"from": "DEGRADED", "to": "NORMAL"}, (CAUSE_MODE, CAUSE_SLOT), RAMP),
        (keys.mode_events, {"from": "NORMAL", "to": "EMERGENCY"}, (), AT_ONCE),
        (keys.mode_events, {"from": "DEGRADED", "to": "EMERGENCY"}, (), AT_ONCE),
        (keys.parked_wake, {"reason": "operator"}, ALL, AT_ONCE),
    ],
)
def test_what_each_event_releases(
    channel: Any, event: dict[str, Any], releases: tuple[str, ...], how: str
) -> None:
    causes, kind, _ = released_by({"channel": channel(), "data": json.dumps(event)})
    assert (causes, kind) == (releases, how)


def _park_one_of_each_cause(lot: Parking) -> None:
    later = time.time() + 3600
    lot.park("no-provider", "llm.default", {}, later, "breaker open", CAUSE_PROVIDER)
    lot.park("held", "llm.low", {}, later, "EMERGENCY", CAUSE_MODE)
    lot.park("slotted", "llm.low", {"_slot_reserved": True}, later, "DEGRADED", CAUSE_SLOT)


def test_a_breaker_event_releases_only_the_jobs_no_provider_could_take(lot: Parking) -> None:
    _park_one_of_each_cause(lot)
    assert [j.job_id for j in lot.claim(causes=(CAUSE_PROVIDER,))] == ["no-provider"]
    # the mode's jobs stay parked, with their due times: neither held-back nor slotted work runs early
    assert lot.depths() == {"llm.high": 0, "llm.default": 0, "llm.low": 2}
    assert lot.claim(causes=(CAUSE_PROVIDER,)) == []


def test_emergency_easing_to_degraded_releases_held_jobs_but_slotted_ones_keep_their_slots(
    lot: Parking,
) -> None:
    _park_one_of_each_cause(lot)
    assert [j.job_id for j in lot.claim(causes=released_by(_mode_event("EMERGENCY", "DEGRADED"))[0])] == [
        "held"
    ]
    assert lot.due_at("slotted") is not None and lot.due_at("no-provider") is not None
    # back to NORMAL: the slotted job goes too
    assert [j.job_id for j in lot.claim(causes=released_by(_mode_event("DEGRADED", "NORMAL"))[0])] == [
        "slotted"
    ]
    assert lot.depths() == {"llm.high": 0, "llm.default": 1, "llm.low": 0}


def _mode_event(before: str, after: str) -> dict[str, Any]:
    return {"channel": keys.mode_events(), "data": json.dumps({"from": before, "to": after})}


def test_a_job_parked_again_for_another_cause_is_released_only_by_the_new_one(lot: Parking) -> None:
    lot.park("j", "llm.low", {}, time.time() + 3600, "breaker open", CAUSE_PROVIDER)
    lot.park("j", "llm.low", {}, time.time() + 3600, "EMERGENCY", CAUSE_MODE)
    assert lot.claim(causes=(CAUSE_PROVIDER,)) == []
    assert [j.job_id for j in lot.claim(causes=(CAUSE_MODE,))] == ["j"]


def test_a_due_release_and_a_lapsed_lease_keep_a_job_in_its_cause_set(
    lot: Parking, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parking, "RELEASE_LEASE_S", 0.3)
    lot.park("held", "llm.default", {}, time.time() - 1, "EMERGENCY", CAUSE_MODE)
    assert [j.job_id for j in lot.claim()] == ["held"]  # due: claimed, then its releaser dies
    assert lot.claim(causes=(CAUSE_MODE,)) == []  # claimed jobs are in no set meanwhile
    time.sleep(0.4)
    # the lapsed lease puts it back where it was: in its queue's set and in its cause's
    assert [j.job_id for j in lot.claim(causes=(CAUSE_MODE,))] == ["held"]


def test_a_claim_fills_its_batch_across_queues(lot: Parking) -> None:
    for i in range(3):
        lot.park(f"d{i}", "llm.default", {}, time.time() - 1, "quota", CAUSE_PROVIDER)
        lot.park(f"l{i}", "llm.low", {}, time.time() - 1, "quota", CAUSE_PROVIDER)
    assert [j.job_id for j in lot.claim(limit=4)] == ["d0", "d1", "d2", "l0"]


def test_parking_refuses_a_cause_it_does_not_know(lot: Parking) -> None:
    with pytest.raises(ValueError, match="'outage'"):
        lot.park("x", "llm.low", {}, time.time(), "no", "outage")


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


def test_a_releaser_hearing_a_breaker_close_releases_only_the_jobs_waiting_for_a_provider(
    lot: Parking, redis_client: Any
) -> None:
    published: list[str] = []
    releaser = Releaser(redis_client, lambda job_id, q, p: published.append(job_id) or True, poll_s=0.2)
    releaser.start()
    try:
        _park_one_of_each_cause(lot)
        time.sleep(0.3)  # the releaser is subscribed by now
        event = {"name": "openai:gpt-4o-mini", "from": "half-open", "to": "closed"}
        redis_client.publish(keys.breaker_events(), json.dumps(event))
        deadline = time.monotonic() + 5
        while "no-provider" not in published and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything else it would release goes in the same pass
        assert published == ["no-provider"]
        assert lot.depths() == {"llm.high": 0, "llm.default": 0, "llm.low": 2}
    finally:
        releaser.stop()
        releaser.join(5)


def test_recovery_releases_a_large_backlog_in_a_ramp_not_all_at_once(lot: Parking, redis_client: Any) -> None:
    # Given 500 jobs parked because no provider could take them
    later = time.time() + 3600
    for i in range(500):
        lot.park(
            f"backlog-{i}", ("llm.high", "llm.default", "llm.low")[i % 3], {}, later, "open", CAUSE_PROVIDER
        )
    released: list[tuple[float, str]] = []

    def publish(job_id: str, queue: str, payload: dict[str, Any]) -> bool:
        released.append((time.monotonic(), queue))
        return True

    releaser = Releaser(redis_client, publish, poll_s=0.1, ramp_first=10, ramp_interval_s=1.0)
    # When the breaker closes (the event every releaser of the fleet hears; two hear it here)
    event = {
        "channel": keys.breaker_events(),
        "data": json.dumps({"name": "openai", "to": "closed", "gen": 7}),
    }
    started = time.monotonic()
    releaser.on_event(event)
    releaser.on_event(event)  # a second releaser: the ramp is made once
    # Then the first interval releases the ramp's first step only, highest priority first ...
    assert len(released) == 10 and {q for _, q in released} == {"llm.high"}
    # ... and the due-time releases follow the ramp: 10, then 20, 40, 80, ... per interval
    # (each step is read 0.3 s after it is due, after one more release: a poll that a busy machine delays
    # past the due time, or a ramp that started a little after ``started``, still counts the step; the
    # next step is not due for another 0.7 s)
    counts = []
    for step in range(1, 7):
        while time.monotonic() < started + step * 1.0 + 0.3:
            lot.release(publish)
            time.sleep(0.05)
        lot.release(publish)
        counts.append(len(released))
    assert counts[:3] == [30, 70, 150], counts
    assert counts[-1] == 500


@pytest.mark.parametrize("probes", [1, 3])
def test_a_half_open_breaker_releases_no_more_jobs_than_it_has_probes_left(
    lot: Parking, redis_client: Any, probes: int
) -> None:
    later = time.time() + 3600
    for i in range(50):
        lot.park(f"waiting-{i}", "llm.default", {}, later, "open", CAUSE_PROVIDER)
    released: list[str] = []
    releaser = Releaser(redis_client, lambda j, q, p: bool(released.append(j)) or True, probes=probes)
    event = {
        "channel": keys.breaker_events(),
        "data": json.dumps({"name": "openai", "to": "half-open", "gen": 3}),
    }
    releaser.on_event(event)
    # the caller whose acquire half-opened it holds one probe: the others go to parked jobs
    assert len(released) == probes - 1
    assert lot.depths()["llm.default"] == 50 - (probes - 1)
    assert all(lot.due_at(f"waiting-{i}") == pytest.approx(later) for i in range(probes - 1, 50))
