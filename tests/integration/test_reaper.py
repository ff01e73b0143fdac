"""A worker that stops beating has its running jobs sent to other workers at once (jobs/reaper.py): a job
whose worker is killed runs again within seconds, not when its lease would lapse; a live worker busy in a
long call is never taken for dead; and a Redis that just restarted judges nobody."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import redis
from conftest import TEST_REDIS_URL, RedisServer, wait_for

from ultra_tasks import JobStatus, keys, submit
from ultra_tasks.config import get_settings
from ultra_tasks.health import tasks as ops_tasks
from ultra_tasks.jobs import reaper, records
from ultra_tasks.jobs.submit import publish
from ultra_tasks.providers.fake_server import prompt_key

pytestmark = [pytest.mark.timeout(120)]


def _calls(fake_provider: Any, prompt: str) -> int:
    """Provider calls the fake provider saw for ``prompt``."""
    return int(fake_provider.stats()["by_prompt"].get(prompt_key(prompt), 0))


@pytest.mark.usefixtures("closed_provider_breakers", "fresh_latencies")
def test_a_job_whose_worker_is_killed_runs_on_another_worker_long_before_its_lease_would_lapse(
    worker_factory: Any, fake_provider: Any
) -> None:
    settings = get_settings()
    # every call of this job takes 20 s (the prompt says so): long enough to start the survivor while the
    # first one is in flight
    prompt = "outlived by its job [[sleep_ms=20000]]"
    doomed = worker_factory(concurrency=1)
    handle = submit(prompt, model="gpt-4o-mini", cache=False)
    wait_for(lambda: _calls(fake_provider, prompt) == 1, 60, "the job's call to go out")
    worker_factory(concurrency=1)  # the survivor, idle
    assert handle.status() is JobStatus.RUNNING
    doomed.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    # beat's reaper, on its schedule (a third of WORKER_DEAD_AFTER), until the survivor calls again
    while _calls(fake_provider, prompt) < 2:
        assert time.monotonic() - killed_at < settings.job_lease_ttl, "the job waited for its lease to lapse"
        ops_tasks.reap()
        time.sleep(settings.worker_dead_after / 3)
    took = time.monotonic() - killed_at
    print(
        f"the job's call went out again {took:.1f} s after its worker was killed (WORKER_DEAD_AFTER "
        f"{settings.worker_dead_after:g} s, JOB_LEASE_TTL {settings.job_lease_ttl:g} s)"
    )
    assert handle.result(timeout=60).text.startswith("echo: outlived by its job")
    # the call in flight on the killed worker, and the one that answered: never more
    assert _calls(fake_provider, prompt) == 2


@pytest.mark.usefixtures("closed_provider_breakers", "fresh_latencies")
def test_a_live_worker_in_a_call_longer_than_worker_dead_after_is_never_taken_for_dead(
    worker_factory: Any, fake_provider: Any
) -> None:
    settings = get_settings()
    prompt = f"a long call [[sleep_ms={int((settings.worker_dead_after + 2) * 1000)}]]"
    worker_factory(concurrency=1)
    handle = submit(prompt, model="gpt-4o-mini", cache=False)
    wait_for(lambda: handle.status() is JobStatus.RUNNING, 60, "the job to start")
    runner = records.get_job(handle.id).worker
    republished: list[str] = []
    while handle.status() is JobStatus.RUNNING:
        republished += ops_tasks.reap()
        time.sleep(0.5)
    assert republished == []
    assert handle.result(timeout=5).text.startswith("echo: a long call")
    # no other run took the job over (a call that timed out may have been retried by this one)
    assert records.get_job(handle.id).worker == runner


def test_a_redis_that_just_restarted_judges_no_worker(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    # a beat far in the past, as the restarted server's data (or a beat before an outage) would hold
    client.zadd(keys.workers_seen(), {"ghost/1": 1000})
    sent: list[str] = []
    report = reaper.reap(client, get_settings(), lambda *job: sent.append(job[0]) or True)
    assert report.skipped and "up" in report.skipped
    assert report.dead == [] and client.zscore(keys.workers_seen(), "ghost/1") == 1000


@pytest.fixture
def state_redis(database: str) -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    if int(client.info("server")["uptime_in_seconds"]) < 2 * get_settings().worker_dead_after:
        pytest.skip("the test Redis restarted a moment ago")
    client.delete(keys.workers_seen(), keys.reaper_round())
    return client


def test_a_worker_that_stops_beating_is_forgotten_once_its_jobs_are_sent(state_redis: redis.Redis) -> None:
    reaper.reap(state_redis, get_settings(), publish)  # the reaper's rounds have begun
    reaper.beat(state_redis, "alive/1")
    state_redis.zadd(keys.workers_seen(), {"gone/2": 1000})  # beat last long ago, running nothing
    report = reaper.reap(state_redis, get_settings(), publish)
    assert report.dead == ["gone/2"] and report.republished == []
    assert state_redis.zscore(keys.workers_seen(), "gone/2") is None
    assert state_redis.zscore(keys.workers_seen(), "alive/1") is not None


def test_a_silent_fleet_or_the_round_after_a_gap_judges_nobody(state_redis: redis.Redis) -> None:
    state_redis.zadd(keys.workers_seen(), {"gone/2": 1000})
    # the first round after a gap in the reaper's rounds (here: its first ever)
    reaper.beat(state_redis, "alive/1")
    assert reaper.reap(state_redis, get_settings(), publish).dead == []
    # no worker beat within WORKER_DEAD_AFTER: Redis or the network failed them all, not death
    state_redis.zadd(keys.workers_seen(), {"alive/1": 2000})
    assert reaper.reap(state_redis, get_settings(), publish).dead == []
    assert state_redis.zscore(keys.workers_seen(), "gone/2") == 1000
