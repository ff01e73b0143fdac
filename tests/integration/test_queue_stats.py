"""Queue metrics: depths (parked jobs too) from Redis, rates and waits from the real job table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import RedisServer, _free_port
from sqlalchemy import func, select, update

from ultra_tasks import JobFailedError, keys, submit
from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import DependencyUnavailableError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.records import jobs
from ultra_tasks.jobs.stats import broker_keys, parked_depths, queue_depths, queue_stats
from ultra_tasks.jobs.validation import build_request

pytestmark = pytest.mark.timeout(120)

#: a moment no other test's jobs are near, so the window holds only the jobs made here
T = datetime(2001, 1, 1, 12, 0, 0, tzinfo=UTC)


def _job(
    *,
    created: float,
    status: str,
    started: float | None = None,
    finished: float | None = None,
) -> str:
    """A job recorded at T+created seconds, then moved to ``status`` at the given offsets from T."""
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt="stats", model="gpt-4o-mini").to_dict()
    records.insert_job(
        job_id=job_id,
        priority="default",
        queue="llm.default",
        model="gpt-4o-mini",
        request=payload,
        now=T + timedelta(seconds=created),
    )
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                status=status,
                started_at=None if started is None else T + timedelta(seconds=started),
                finished_at=None if finished is None else T + timedelta(seconds=finished),
            )
        )
    return job_id


def test_rates_and_waits_count_exactly_the_jobs_of_the_window(database: str) -> None:
    # Given jobs around a 300 s window ending at T (offsets in seconds from T)
    _job(created=-100, started=-90, finished=-80, status="succeeded")  # wait 10
    _job(created=-60, started=-30, finished=-20, status="failed")  # wait 30
    _job(created=-50, started=-48, status="running")  # wait 2, not finished
    _job(created=-400, started=-350, finished=-10, status="succeeded")  # started before the window
    _job(created=-200, finished=-5, status="expired")  # never started
    _job(created=-310, started=-300, finished=-300, status="succeeded")  # on the window's open edge
    _job(created=-1.5, started=-0.5, finished=0, status="succeeded")  # wait 1, ends on the closed edge
    _job(created=-2, started=1, finished=5, status="succeeded")  # after the window
    _job(created=-3, status="queued")  # still waiting

    stats = queue_stats(300, now=T)

    # Then five ended in it (one expired, counted with the failures), four first started in it
    assert {k: v for k, v in stats.items() if k not in ("avg_wait_s", "max_wait_s")} == {
        "window_s": 300.0,
        "processed": 5,
        "succeeded": 3,
        "failed": 2,
        "expired": 1,
        "started": 4,
        "processing_rate_per_s": 5 / 300,
        "success_rate": 0.6,
        "failure_rate": 0.4,
    }
    assert stats["avg_wait_s"] == pytest.approx((10 + 30 + 2 + 1) / 4, abs=1e-3)
    assert stats["max_wait_s"] == pytest.approx(30, abs=1e-3)


def test_an_empty_window_has_no_rates_or_waits(database: str) -> None:
    stats = queue_stats(60, now=datetime(1990, 1, 1, tzinfo=UTC))
    assert stats["processed"] == stats["started"] == 0
    assert stats["processing_rate_per_s"] == 0.0
    assert (
        stats["success_rate"] is stats["failure_rate"] is stats["avg_wait_s"] is stats["max_wait_s"] is None
    )


def test_a_window_that_is_not_positive_is_refused(database: str) -> None:
    with pytest.raises(ValueError, match="window_s"):
        queue_stats(-1)


def test_stats_of_jobs_run_by_a_real_worker_match_their_records(llm_worker: Any, fake_provider: Any) -> None:
    # Given four jobs that succeed and two that fail (a permanent 400 on their model, no fallback)
    fake_provider.add_fault("status", status=400, model="gpt-4o", message="bad request")
    t0 = utcnow()
    ok = [submit(f"stats ok {i} {uuid.uuid4()}", model="gpt-4o-mini") for i in range(4)]
    bad = [submit(f"stats bad {i} {uuid.uuid4()}", model="gpt-4o", fallback=False) for i in range(2)]
    for handle in ok:
        handle.result(timeout=60)
    for handle in bad:
        with pytest.raises(JobFailedError):
            handle.result(timeout=60)
    now = utcnow()
    mine = [h.id for h in ok + bad]
    with transaction() as conn:
        others = conn.execute(
            select(func.count()).where(jobs.c.id.not_in(mine), jobs.c.finished_at > t0)
        ).scalar_one()
    assert others == 0, "another test's jobs ended in the window"

    # When the stats cover the time since just before the first submit
    window = (now - t0).total_seconds() + 0.001
    stats = queue_stats(window, now=now)

    # Then they agree with the job records
    waits = [(r.started_at - r.created_at).total_seconds() for r in map(records.get_job, mine)]
    assert all(w is not None and w >= 0 for w in waits)
    assert stats["processed"] == 6 and stats["succeeded"] == 4 and stats["failed"] == 2
    assert stats["started"] == 6 and stats["expired"] == 0
    assert stats["success_rate"] == pytest.approx(4 / 6) and stats["failure_rate"] == pytest.approx(2 / 6)
    assert stats["processing_rate_per_s"] == pytest.approx(6 / window)
    assert stats["avg_wait_s"] == pytest.approx(sum(waits) / 6, abs=2e-3)
    assert stats["max_wait_s"] == pytest.approx(max(waits), abs=2e-3)


def test_depths_sum_every_priority_step_and_count_parked_jobs(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    assert broker_keys("llm.low") == ["llm.low", "llm.low\x06\x163", "llm.low\x06\x166", "llm.low\x06\x169"]
    client.rpush("llm.low", "a")
    client.rpush("llm.low\x06\x163", "b", "c")
    client.rpush("llm.low\x06\x169", "d")
    client.rpush("ops", "e")
    client.rpush("llm.high", "f")
    client.zadd(keys.parked("llm.high"), {"j1": 1, "j2": 2, "j3": 3})
    client.zadd(keys.parked("llm.low"), {"j4": 4})
    assert queue_depths(client) == {"llm.high": 1, "llm.default": 0, "llm.low": 4, "ops": 1}
    assert parked_depths(client) == {"llm.high": 3, "llm.default": 0, "llm.low": 1}


def test_depths_of_an_unreachable_redis_raise_dependency_unavailable() -> None:
    port = _free_port()
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    with pytest.raises(DependencyUnavailableError, match=f"127.0.0.1:{port}"):
        queue_depths(client)
    with pytest.raises(DependencyUnavailableError, match=f"127.0.0.1:{port}"):
        parked_depths(client)
