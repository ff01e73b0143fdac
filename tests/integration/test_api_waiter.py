"""The API's job waiter against the real Redis and SQL database: news of a finished job wakes its request
at once, and a finished job whose news was missed is found by the sweep."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ultra_tasks import keys
from ultra_tasks.api.waiter import JobWaiter
from ultra_tasks.clock import utcnow
from ultra_tasks.db.engine import transaction
from ultra_tasks.jobs import records

pytestmark = pytest.mark.timeout(60)


def _record_succeeded(job_id: str) -> None:
    now = utcnow()
    with transaction() as conn:
        conn.execute(
            records.jobs.insert().values(
                id=job_id,
                status="succeeded",
                priority="default",
                queue="llm.default",
                model="gpt-4o-mini",
                request={},
                result={"job_id": job_id, "status": "succeeded", "text": "done", "model": "gpt-4o-mini"},
                attempts=1,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
        )


async def _wait(waiter: JobWaiter, job_id: str, act: Any, timeout: float) -> tuple[Any, float]:
    registration = waiter.register(job_id)
    try:
        start = time.monotonic()
        act()
        outcome = await registration.wait(timeout)
        return outcome, time.monotonic() - start
    finally:
        registration.close()


def test_news_of_a_finished_job_wakes_its_waiter_without_waiting_for_the_sweep(
    redis_client: Any, database: str
) -> None:
    waiter = JobWaiter(sweep_s=30.0).start()  # a sweep this rare cannot be what answers
    try:
        assert waiter.subscribed.is_set()
        job_id = str(uuid.uuid4())

        def finish() -> None:
            _record_succeeded(job_id)
            redis_client.publish(keys.jobs_finished(), job_id)  # what the slot's release script sends

        outcome, took = asyncio.run(_wait(waiter, job_id, finish, 10))
        assert outcome is not None and outcome["text"] == "done"
        assert took < 2.0
        assert waiter.pending() == 0
    finally:
        waiter.stop()


def test_a_finished_job_whose_news_was_missed_is_found_by_the_sweep(redis_client: Any, database: str) -> None:
    waiter = JobWaiter(sweep_s=0.3).start()
    try:
        job_id = str(uuid.uuid4())
        outcome, took = asyncio.run(_wait(waiter, job_id, lambda: _record_succeeded(job_id), 10))
        assert outcome is not None and outcome["text"] == "done"
        assert took < 3.0
        # and a job that never finishes times out as None, leaving nothing registered
        outcome, _ = asyncio.run(_wait(waiter, str(uuid.uuid4()), lambda: None, 0.5))
        assert outcome is None and waiter.pending() == 0
    finally:
        waiter.stop()
