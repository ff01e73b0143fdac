"""What the operation mode does to jobs, on a real worker: EMERGENCY parks all but llm.high and tells
producers; recovery releases parked work at once; DEGRADED slows llm.low and prefers the cache."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for

from ultra_tasks import JobStatus, SystemOperationMode, keys, submit
from ultra_tasks.jobs import records
from ultra_tasks.jobs.parking import Parking

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("closed_provider_breakers")]

#: how long a worker may keep using the mode it read last (ModeReader.ttl_s), plus slack
MODE_PROPAGATION_S = 1.3


@pytest.fixture
def mode(redis_client: Any, database: str) -> Iterator[SystemOperationMode]:
    redis_client.delete(*keys.parking_keys())
    m = SystemOperationMode()
    m.clear_override()
    yield m
    m.clear_override()
    m.close()


def test_emergency_parks_all_but_high_holds_no_worker_and_recovery_releases_them(
    worker_factory: Any, fake_provider: Any, mode: SystemOperationMode, redis_client: Any
) -> None:
    worker_factory(concurrency=1)  # one thread: a parked job holding it would stall everything
    mode.set_override("EMERGENCY", 120, reason="test")
    time.sleep(MODE_PROPAGATION_S)

    # Producers are told at submit why their job will wait
    low = [submit(f"low {i}", model="gpt-4o-mini", priority="low") for i in range(3)]
    default = [submit(f"default {i}", model="gpt-4o-mini") for i in range(3)]
    assert all(h.notice and "EMERGENCY" in h.notice for h in low + default)
    high = submit("urgent", model="gpt-4o-mini", priority="high")
    assert high.notice is None
    assert high.result(timeout=30).text == "echo: urgent"

    # the others are parked, saying why, and hold no worker thread: more high work still runs at once
    wait_for(lambda: all(h.status() is JobStatus.PARKED for h in low + default), 20, "jobs to be parked")
    assert all("EMERGENCY" in (h.status_reason() or "") for h in low + default)
    assert Parking(redis_client).depths() == {"llm.high": 0, "llm.default": 3, "llm.low": 3}
    assert submit("more urgent", model="gpt-4o-mini", priority="high").result(timeout=20).provider
    calls_parked = fake_provider.stats()["by_model"].get("gpt-4o-mini", 0)
    assert calls_parked == 2  # the parked jobs never called the provider

    # Recovery: the mode improves and every parked job completes at once (not at its due time, 30 s away)
    released_at = time.monotonic()
    assert mode.clear_override() == "NORMAL"
    for handle in default + low:
        assert handle.result(timeout=20).text.startswith("echo: ")
    assert time.monotonic() - released_at < 15
    assert Parking(redis_client).depths() == {"llm.high": 0, "llm.default": 0, "llm.low": 0}
    assert fake_provider.stats()["by_model"]["gpt-4o-mini"] == 8  # each job called the provider once
    # released in priority order: on one thread, every default job finished before any low job
    ends = {h.id: records.get_job(h.id).finished_at for h in default + low}
    assert max(ends[h.id] for h in default) <= min(ends[h.id] for h in low)


def test_degraded_slows_low_jobs_to_the_configured_rate_and_leaves_others_alone(
    worker_factory: Any, mode: SystemOperationMode
) -> None:
    per_minute = 60.0  # one low job a second, fleet-wide
    interval = 60.0 / per_minute
    worker_factory(concurrency=4, env={"MODE_DEGRADED_LOW_RATE": str(per_minute)})
    mode.set_override("DEGRADED", 120, reason="test")
    time.sleep(MODE_PROPAGATION_S)

    low = [submit(f"slow {i}", model="gpt-4o-mini", priority="low") for i in range(6)]
    default = [submit(f"normal {i}", model="gpt-4o-mini") for i in range(6)]
    for handle in default + low:
        handle.result(timeout=60)
    low_jobs = [records.get_job(h.id) for h in low]
    # A low job's started_at is its first claim, when it reserved its slot (before it was parked for it);
    # the first claim reserved the first slot. Six jobs need five intervals after it, however long each
    # run itself took (a 10% margin for clock granularity).
    first_claim = min(j.started_at.timestamp() for j in low_jobs)
    low_ends = sorted(j.finished_at.timestamp() for j in low_jobs)
    default_ends = [records.get_job(h.id).finished_at.timestamp() for h in default]
    figures = f"low ends {[round(e - first_claim, 2) for e in low_ends]} s after the first low claim"
    assert low_ends[-1] - first_claim >= 5 * interval * 0.9, figures
    # default jobs did not wait for the low ones' schedule
    assert max(default_ends) < low_ends[-1], (
        f"{figures}; default ends {sorted(round(e - first_claim, 2) for e in default_ends)}"
    )
    # each low job ran once on its reserved slot, not parked again and again
    assert [j.attempts for j in low_jobs] == [1] * 6, figures


def test_a_flapping_breaker_in_degraded_does_not_let_slotted_low_jobs_run_ahead_of_their_slots(
    worker_factory: Any, mode: SystemOperationMode, redis_client: Any
) -> None:
    interval = 2.0
    worker_factory(concurrency=4, env={"MODE_DEGRADED_LOW_RATE": str(60.0 / interval)})
    mode.set_override("DEGRADED", 120, reason="test")
    time.sleep(MODE_PROPAGATION_S)

    low = [submit(f"slotted {i}", model="gpt-4o-mini", priority="low") for i in range(4)]
    wait_for(lambda: sum(Parking(redis_client).depths().values()) >= 2, 20, "low jobs parked on slots")
    assert {json.loads(v)["cause"] for v in redis_client.hvals(keys.parked_jobs())} == {"slot"}
    # a breaker closes again and again while they wait: that is no reason for them to run sooner
    for _ in range(3):
        event = {"name": "openai:gpt-4o-mini", "from": "half-open", "to": "closed"}
        redis_client.publish(keys.breaker_events(), json.dumps(event))
        time.sleep(0.3)
    for handle in low:
        handle.result(timeout=60)
    jobs = [records.get_job(h.id) for h in low]
    first_claim = min(j.started_at.timestamp() for j in jobs)
    ends = sorted(round(j.finished_at.timestamp() - first_claim, 2) for j in jobs)
    assert ends[-1] >= 3 * interval * 0.9, f"low ends {ends} s after the first low claim"


def test_degraded_answers_repeated_requests_from_the_cache_even_when_not_deterministic(
    llm_worker: Any, fake_provider: Any, mode: SystemOperationMode
) -> None:
    prompt = f"creative {time.time()}"
    # NORMAL neither keeps nor reads answers to a non-deterministic request
    assert submit(prompt, model="gpt-4o-mini", temperature=0.9).result(timeout=30).cached is False
    assert submit(prompt, model="gpt-4o-mini", temperature=0.9).result(timeout=30).cached is False
    assert fake_provider.stats()["by_model"]["gpt-4o-mini"] == 2

    # DEGRADED: the first answer is kept, and a repeat is served from it without a provider call
    mode.set_override("DEGRADED", 120, reason="test")
    time.sleep(MODE_PROPAGATION_S)
    first = submit(prompt, model="gpt-4o-mini", temperature=0.9).result(timeout=30)
    assert first.cached is False
    again = submit(prompt, model="gpt-4o-mini", temperature=0.9).result(timeout=30)
    assert again.cached is True and again.text == first.text
    assert fake_provider.stats()["by_model"]["gpt-4o-mini"] == 3
    # a job that opted out of the cache still calls the provider
    opted_out = submit(prompt, model="gpt-4o-mini", temperature=0.9, cache=False).result(timeout=30)
    assert opted_out.cached is False
    assert fake_provider.stats()["by_model"]["gpt-4o-mini"] == 4


def _low_admissions(redis_client: Any, count: int) -> list[Any]:
    from ultra_tasks.config import get_settings
    from ultra_tasks.mode.effects import ModeEffects

    effects = ModeEffects(get_settings(), redis_client)  # a worker that reads the mode afresh
    return [effects.admit("llm.low", {}) for _ in range(count)]


def test_a_new_degraded_episode_starts_with_an_empty_llm_low_schedule(
    mode: SystemOperationMode, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("MODE_DEGRADED_LOW_RATE", "1")  # one llm.low start a minute
    reset_settings()
    # Given a DEGRADED episode that left three minutes of llm.low starts reserved
    mode.set_override("DEGRADED", 120, reason="first episode")
    first = _low_admissions(redis_client, 4)
    assert first[0].run and [round(a.wait_s / 60) for a in first[1:]] == [1, 2, 3]
    # When the mode recovers and degrades again
    mode.set_override("NORMAL", 120, reason="recovered")
    mode.set_override("DEGRADED", 120, reason="second episode")
    # Then the new episode's first llm.low job starts at once, not behind the old backlog
    assert _low_admissions(redis_client, 1)[0].run


def test_no_degraded_start_slot_is_reserved_further_ahead_than_park_max_wait(
    mode: SystemOperationMode, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ultra_tasks.config import reset_settings

    monkeypatch.setenv("MODE_DEGRADED_LOW_RATE", "1")
    monkeypatch.setenv("PARK_MAX_WAIT", "150")
    reset_settings()
    mode.set_override("DEGRADED", 120, reason="slots")
    admissions = _low_admissions(redis_client, 5)
    # slots now, +60 s, +120 s; the next would be +180 s: beyond PARK_MAX_WAIT nothing is reserved, the job
    # parks for PARK_MAX_WAIT and asks again
    assert [a.slot_reserved for a in admissions] == [False, True, True, False, False]
    assert all(a.wait_s <= 150 for a in admissions)
    assert not admissions[3].run and admissions[3].wait_s == 150
    assert "schedule is full" in admissions[3].reason
