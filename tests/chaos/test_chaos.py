"""Chaos, bounded: kill -9 a worker with 200 jobs in flight, restart Redis mid-batch, stop the broker while
producers submit, take every provider down. Each test stops by itself and touches only loopback services
it started (or the session's fake provider)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fleet import AofRedis, Fleet, aof_redis_fixture, fleet_fixture  # noqa: F401 - the fixtures
from producer import MODEL

from ultra_tasks import JobStatus, submit
from ultra_tasks.celery_app import app
from ultra_tasks.config import load_settings
from ultra_tasks.jobs import records
from ultra_tasks.jobs.parking import Parking

pytestmark = pytest.mark.timeout(300)


def _ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_kill_9_with_200_jobs_in_flight_every_job_succeeds_once_within_the_call_bound(
    fleet: Fleet, fake_provider: Any, tmp_path: Path
) -> None:
    jobs = 220
    # long enough that the producer's 220 submits are all in flight at once on a busy machine
    fake_provider.add_fault("latency", model=MODEL, ms=8000)
    victim = fleet.worker("victim", concurrency=210, queues="llm.high,llm.default,llm.low")
    ids_file = tmp_path / "ids"
    fleet.producer("producer", jobs, ids_file).wait(120)
    assert len(_ids(ids_file)) == jobs

    # When 200 jobs are in flight at the provider, the worker is killed outright
    fleet.wait_until(lambda: fake_provider.stats()["in_flight"] >= 200, 60, "200 calls in flight")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    # calls in flight at the kill: started (the provider saw them) and not answered to a recorded job
    in_flight_at_kill = fake_provider.stats()["by_model"][MODEL] - fleet.count("succeeded")
    assert in_flight_at_kill >= 200
    assert fleet.count(JobStatus.RUNNING.value) >= 200  # leased by the dead worker

    # Then a new worker and the beat sweeper (which finds the jobs held by a dead process) finish them all
    fake_provider.clear_faults()
    fleet.worker("rescuer", concurrency=50)
    fleet.beat()
    fleet.wait_until(lambda: fleet.count(JobStatus.SUCCEEDED.value) == jobs, 150, "every job to succeed")
    table = fleet.jobs()
    assert set(table) == set(_ids(ids_file))
    assert all(status == JobStatus.SUCCEEDED.value for status, _ in table.values())
    calls = fake_provider.stats()["by_model"][MODEL]
    # at most one call per job plus one more for each call the kill interrupted
    assert jobs <= calls <= jobs + in_flight_at_kill
    # attempts are counted before a call goes out, so they never undercount what the provider saw (a call
    # the kill cut off before it was sent, or one that failed to connect, counts without reaching it), and
    # no job went past its attempt budget
    assert calls <= sum(attempts for _, attempts in table.values())
    assert max(attempts for _, attempts in table.values()) <= load_settings().effective_attempt_budget


def test_redis_restart_mid_batch_loses_no_accepted_job(
    fleet: Fleet, aof_redis: AofRedis, fake_provider: Any, tmp_path: Path
) -> None:
    fake_provider.add_fault("latency", model=MODEL, ms=100)
    fleet.worker("worker", concurrency=8)
    fleet.beat()
    ids_file = tmp_path / "ids"
    producer = fleet.producer("producer", 150, ids_file, pause_s=0.02)
    fleet.wait_until(lambda: len(_ids(ids_file)) >= 50, 60, "50 accepted jobs")

    # Redis (broker, results and shared state) restarts with jobs queued and running
    queued_before = aof_redis.client().llen("llm.default")
    aof_redis.stop()
    time.sleep(3)
    aof_redis.start()
    assert producer.wait(120) == 0

    accepted = set(_ids(ids_file))
    assert len(accepted) == 150
    fleet.wait_until(
        lambda: fleet.count(JobStatus.SUCCEEDED.value) == len(accepted), 180, "every accepted job to succeed"
    )
    assert set(fleet.jobs()) == accepted
    assert queued_before >= 0  # (read before the restart: the AOF kept the queues it held)


def test_broker_stopped_while_producers_submit_accepted_jobs_run_after_it_returns(
    fleet: Fleet, fake_provider: Any, tmp_path: Path
) -> None:
    broker = AofRedis(tmp_path / "broker")
    broker.start()
    try:
        fleet.env["BROKER_URL"] = broker.url
        fleet.worker("worker", concurrency=8)
        fleet.beat()
        ids_file = tmp_path / "ids"
        producer = fleet.producer("producer", 120, ids_file, pause_s=0.03)
        fleet.wait_until(lambda: len(_ids(ids_file)) >= 30, 60, "30 accepted jobs")

        broker.stop()  # producers keep submitting: the job table takes the jobs (the outbox)
        fleet.wait_until(lambda: len(_ids(ids_file)) >= 60, 60, "jobs accepted while the broker is down")
        broker.start()
        assert producer.wait(120) == 0

        accepted = set(_ids(ids_file))
        assert len(accepted) == 120
        fleet.wait_until(
            lambda: fleet.count(JobStatus.SUCCEEDED.value) == len(accepted),
            180,
            "every accepted job to succeed",
        )
        assert set(fleet.jobs()) == accepted
        assert "sweeper republished" in fleet.log("worker")  # the outbox, not luck, delivered them
    finally:
        fleet.stop_all()
        broker.stop()


@pytest.mark.usefixtures("closed_provider_breakers")
def test_every_provider_down_parks_jobs_holding_no_worker_then_all_succeed(
    worker_factory: Any, fake_provider: Any, redis_client: Any
) -> None:
    # Threshold 2: a job's attempt budget (5) outlasts both breakers' trips even if it alone makes every
    # failing call (2 + 2). At 3 it could spend its budget first (3 + 2) and fail, as the budget says it
    # must: that happened about one run in five, depending on which job the two threads' failures hit.
    worker = worker_factory(
        concurrency=2,
        env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2", "CIRCUIT_BREAKER_RESET_TIMEOUT": "3"},
    )
    fake_provider.add_fault("status", status=503)  # both APIs, every model
    handles = [submit(f"outage {i}", model="gpt-4o-mini") for i in range(30)]

    # Every job ends parked: none failed, and the parked jobs hold no worker thread
    def parked() -> int:
        return sum(1 for h in handles if h.status() is JobStatus.PARKED)

    deadline = time.monotonic() + 60
    while parked() < len(handles):
        assert time.monotonic() < deadline, f"jobs were not all parked\n{worker.log()[-6000:]}"
        failed = [records.get_job(h.id).error for h in handles if h.status() is JobStatus.FAILED]
        assert not failed, json.dumps(failed, indent=1, default=str)
        time.sleep(0.2)
    lot = Parking(redis_client)  # (an earlier test's job may wait there too)
    assert all(lot.due_at(h.id) is not None for h in handles)
    # (a job's row says parked a moment before its task has put it in Redis and let its thread go)
    deadline = time.monotonic() + 15
    while (app.control.inspect(destination=[worker.name], timeout=2).active() or {}).get(worker.name) != []:
        assert time.monotonic() < deadline, "parked jobs still hold worker threads"
        time.sleep(0.5)
    calls_during_outage = fake_provider.stats()["total"]
    # the breakers, not the jobs, decide how often a dead provider is tried
    assert calls_during_outage < len(handles)

    # After recovery every job succeeds, each with at most the calls its own budget allows
    fake_provider.clear_faults()
    for handle in handles:
        assert handle.result(timeout=90).text.startswith("echo: ")
    assert all(lot.due_at(h.id) is None for h in handles)
    assert all(records.get_job(h.id).status == JobStatus.SUCCEEDED.value for h in handles)
