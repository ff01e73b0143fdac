"""One fenced lease per run (jobs/lease.py): a job runs in one place at a time, with the database up or
down, however long the run takes; a run that lost its lease calls and writes nothing; a takeover continues
the attempt budget; buffered writes apply once whatever their order.

Two worker processes are two ``Leases`` objects with different owners, against the real Redis and SQL.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import update

from ultra_tasks import keys
from ultra_tasks.clock import utcnow
from ultra_tasks.config import get_settings, reset_settings
from ultra_tasks.db.engine import transaction
from ultra_tasks.errors import LeaseLostError
from ultra_tasks.jobs import records
from ultra_tasks.jobs.lease import Acquired, Leases
from ultra_tasks.jobs.liveness import Heartbeat
from ultra_tasks.jobs.record_buffer import RecordWriter
from ultra_tasks.jobs.runner import execute_job
from ultra_tasks.jobs.validation import build_request
from ultra_tasks.providers.base import LLMResponse, Usage
from ultra_tasks.redis_client import REDIS_DOWN
from ultra_tasks.resilience.chains import ChainEntry
from ultra_tasks.resilience.pipeline import CallOutcome

pytestmark = pytest.mark.timeout(120)

#: a database URL nobody answers at: the job table is "down" for the run given it
DOWN_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:9/none"


class CountingCaller:
    """Stands in for the provider pipeline: takes an attempt from the budget (as every real call does,
    which is where the lease counts and checks it) and answers."""

    def __init__(self, model: str = "gpt-4o") -> None:
        self.calls = 0
        self.model = model

    def call(self, request: Any, chain: list[ChainEntry], budget: Any) -> CallOutcome:
        assert budget.take(), "the job's attempt budget is spent"
        self.calls += 1
        response = LLMResponse("answer", self.model, "openai", Usage(3, 4), 1.0, "stop")
        return CallOutcome(response, ChainEntry("openai", "gpt-4o"), fallback_used=False)


def _job(prompt: str = "leased") -> tuple[str, dict[str, Any]]:
    job_id = str(uuid.uuid4())
    payload = build_request(get_settings(), prompt=prompt, model="gpt-4o").to_dict()
    payload["cache"] = False
    records.insert_job(
        job_id=job_id, priority="default", queue="llm.default", model="gpt-4o", request=payload
    )
    records.mark_published(job_id)
    return job_id, payload


def _leases(client: redis.Redis, **env: str) -> Leases:
    os.environ.update(env)
    reset_settings()
    return Leases(client, get_settings())


@pytest.fixture
def sql_down() -> Any:
    """Within ``with sql_down():`` this process's job table is unreachable."""
    import contextlib

    from ultra_tasks.db.engine import dispose_engines

    @contextlib.contextmanager
    def down() -> Any:
        saved = os.environ["DATABASE_URL"]
        os.environ.update({"DATABASE_URL": DOWN_DATABASE, "DATABASE_CONNECT_TIMEOUT": "1"})
        reset_settings()
        try:
            yield
        finally:
            os.environ["DATABASE_URL"] = saved
            reset_settings()
            dispose_engines()

    return down


def test_a_duplicate_delivered_while_the_database_is_down_does_not_run_a_job_claimed_in_sql(
    database: str, redis_client: redis.Redis, sql_down: Any
) -> None:
    # Given a run on worker A that claimed its job with the database up
    job_id, payload = _job()
    first = _leases(redis_client).acquire(job_id, "worker-a/1")
    assert isinstance(first, Acquired) and first.start is not None
    # When a duplicate of the message reaches worker B while the database is down
    caller = CountingCaller()
    with sql_down():
        outcome = execute_job(
            job_id, payload, worker="worker-b/2", caller=caller, leases=_leases(redis_client)
        )  # type: ignore[arg-type]
    # Then B does nothing: A's lease is in Redis too
    assert outcome.status == "duplicate" and caller.calls == 0


def test_a_duplicate_after_the_database_returns_does_not_run_a_job_leased_while_it_was_down(
    database: str, redis_client: redis.Redis, sql_down: Any
) -> None:
    # Given a run on worker A that started while the database was down (its "started" write is buffered)
    job_id, payload = _job()
    with sql_down():
        first = _leases(redis_client).acquire(job_id, "worker-a/1")
    assert isinstance(first, Acquired) and not first.lease.in_sql
    assert records.get_job(job_id).status == "queued"  # the table does not know yet
    # When the database is back and a duplicate reaches worker B before the buffer is flushed
    caller = CountingCaller()
    outcome = execute_job(job_id, payload, worker="worker-b/2", caller=caller, leases=_leases(redis_client))  # type: ignore[arg-type]
    # Then B does nothing
    assert outcome.status == "duplicate" and caller.calls == 0


def test_a_run_longer_than_any_cutoff_keeps_its_job_while_its_worker_renews_the_lease(
    database: str, redis_client: redis.Redis
) -> None:
    # Given a run whose lease lasts 3 s, renewed by its heartbeat, that has been running for 400 s
    job_id, payload = _job()
    leases_a = _leases(redis_client, JOB_LEASE_TTL="3")
    got = leases_a.acquire(job_id, "worker-a/1")
    assert isinstance(got, Acquired)
    with transaction() as conn:  # the row says the run started long ago (past JOB_TIME_LIMIT + 60)
        conn.execute(
            update(records.jobs)
            .where(records.jobs.c.id == job_id)
            .values(
                updated_at=utcnow() - timedelta(seconds=400), started_at=utcnow() - timedelta(seconds=400)
            )
        )
    heartbeat = Heartbeat(redis_client, "worker-a/1", leases_a, interval_s=0.5)
    heartbeat.start()
    try:
        time.sleep(4)  # longer than the lease itself
        # When a duplicate arrives at worker B
        caller = CountingCaller()
        outcome = execute_job(
            job_id, payload, worker="worker-b/2", caller=caller, leases=_leases(redis_client)
        )  # type: ignore[arg-type]
        # Then it does nothing, and the sweeper does not take the job for dead either
        assert outcome.status == "duplicate" and caller.calls == 0
        assert job_id not in [j for j, _, _ in records.jobs_to_republish(10.0, 0.0)]
    finally:
        heartbeat.stop()
        heartbeat.join(5)


def test_a_takeover_after_the_worker_died_continues_the_jobs_attempt_budget(
    database: str, redis_client: redis.Redis
) -> None:
    # Given a run that made two provider calls, then its worker died (nobody renews its 3 s lease)
    job_id, _ = _job()
    leases_a = _leases(redis_client, JOB_LEASE_TTL="3")
    got = leases_a.acquire(job_id, "worker-a/1")
    assert isinstance(got, Acquired)
    leases_a.begin_call(got.lease)
    leases_a.begin_call(got.lease)
    time.sleep(3.2)
    # Then the sweeper republishes it (its lease lapsed) ...
    assert job_id in [j for j, _, _ in records.jobs_to_republish(10.0, 0.0)]
    # ... and the run that takes it over starts with the two calls already spent
    leases_b = _leases(redis_client, JOB_LEASE_TTL="3")
    taken = leases_b.acquire(job_id, "worker-b/2")
    assert isinstance(taken, Acquired) and taken.lease.charged == 2
    assert taken.lease.token > got.lease.token
    # and the dead run, had it been only frozen, can neither call nor write
    with pytest.raises(LeaseLostError):
        leases_a.begin_call(got.lease)
    assert records.mark_succeeded(job_id, {"text": "stale"}, token=got.lease.token, attempts=3) is False


def test_a_retry_whose_interrupted_run_could_not_give_its_lease_back_runs_on_the_same_worker(
    database: str, redis_client: redis.Redis
) -> None:
    # Given a run on worker A interrupted by an outage that also kept it from giving its lease back
    job_id, payload = _job()
    interrupted = _leases(redis_client).acquire(job_id, "worker-a/1")
    assert isinstance(interrupted, Acquired)
    # When the task's retry reaches the same worker process (no run of it holds the job any more)
    caller = CountingCaller()
    outcome = execute_job(job_id, payload, worker="worker-a/1", caller=caller, leases=_leases(redis_client))  # type: ignore[arg-type]
    # Then it runs, rather than being dropped as a duplicate of itself
    assert outcome.status == "succeeded" and caller.calls == 1
    assert records.get_job(job_id).status == "succeeded"


def test_a_retry_that_finds_the_job_leased_elsewhere_is_told_when_the_lease_lapses(
    database: str, redis_client: redis.Redis
) -> None:
    job_id, payload = _job()
    assert isinstance(_leases(redis_client, JOB_LEASE_TTL="20").acquire(job_id, "worker-a/1"), Acquired)
    outcome = execute_job(
        job_id, payload, worker="worker-b/2", caller=CountingCaller(), leases=_leases(redis_client)
    )  # type: ignore[arg-type]
    assert outcome.status == "duplicate" and 10 < outcome.retry_after <= 20


def test_a_providers_model_name_too_long_for_its_column_still_ends_the_job(
    database: str, redis_client: redis.Redis
) -> None:
    # A provider may name its model with any length; the job must end succeeded, never stay running
    job_id, payload = _job()
    caller = CountingCaller(model="m" * 200)
    outcome = execute_job(job_id, payload, worker="w/1", caller=caller, leases=_leases(redis_client))  # type: ignore[arg-type]
    assert outcome.status == "succeeded"
    record = records.get_job(job_id)
    assert record.status == "succeeded" and record.model_used == "m" * 128


@pytest.mark.skipif(
    "postgresql" not in os.environ.get("DATABASE_URL", ""), reason="SQLite stores any value in any column"
)
def test_an_outcome_the_database_refuses_is_recorded_as_failed_instead_of_left_running(
    database: str, redis_client: redis.Redis
) -> None:
    from ultra_tasks.jobs.record_buffer import apply

    job_id, _ = _job()
    got = _leases(redis_client).acquire(job_id, "w/1")
    assert isinstance(got, Acquired)
    result = {"text": "x", "provider": "openai", "model": "gpt-4o", "latency_ms": "not a number"}
    apply("succeeded", job_id, utcnow(), {"result": result, "token": got.lease.token, "attempts": 1})
    record = records.get_job(job_id)
    assert record.status == "failed" and record.error is not None
    assert record.error["kind"] == "internal" and "could not be recorded" in record.error["message"]


def test_buffered_writes_applied_twice_and_out_of_order_leave_the_row_as_applied_once(
    database: str, redis_client: redis.Redis
) -> None:
    # Given a run that started and succeeded with two calls while the database was down, and the writes
    # of an older run of the same job, all in the buffer
    job_id, _ = _job()
    redis_client.delete(keys.record_buffer(), keys.record_buffer_inflight(), keys.record_buffer_lock())
    writer = RecordWriter(redis_client)
    old, new = 1_000, 2_000
    now = utcnow()
    writer.buffer("started", job_id, now, worker="w/2", token=new)
    result = {"job_id": job_id, "text": "new", "provider": "openai", "model": "gpt-4o", "latency_ms": 1.0}
    writer.buffer("succeeded", job_id, now, result=result, token=new, attempts=2)
    # When the buffer is applied twice (a flusher whose lock lapsed and the one that took over) and an
    # older run's writes arrive after the newer run's
    entries = redis_client.lrange(keys.record_buffer(), 0, -1)
    redis_client.rpush(keys.record_buffer(), *entries)
    writer.buffer("started", job_id, now, worker="w/1", token=old)
    writer.buffer("failed", job_id, now, error={"kind": "transient"}, token=old, attempts=5)
    assert writer.flush() == 6
    # Then the row holds the newer run's outcome, its calls counted once
    record = records.get_job(job_id)
    assert (record.status, record.attempts, record.worker) == ("succeeded", 2, "w/2")
    assert record.result is not None and record.result["text"] == "new"


def test_a_flusher_that_lost_its_lock_stops(database: str, redis_client: redis.Redis) -> None:
    import ultra_tasks.jobs.record_buffer as rb

    job_id, _ = _job()
    redis_client.delete(keys.record_buffer(), keys.record_buffer_inflight(), keys.record_buffer_lock())
    writer = RecordWriter(redis_client)
    for _ in range(3):
        writer.buffer("released", job_id, utcnow())
    applied: list[str] = []
    original = rb._APPLY["released"]

    def slow(job_id: str, at: Any = None) -> None:
        applied.append(job_id)
        redis_client.set(keys.record_buffer_lock(), "another-flusher")  # our lock lapsed and was taken

    rb._APPLY["released"] = slow
    saved_renew_s = rb.FLUSH_RENEW_S
    rb.FLUSH_RENEW_S = 0  # renew before every entry
    try:
        assert writer.flush() == 1
    finally:
        rb._APPLY["released"] = original
        rb.FLUSH_RENEW_S = saved_renew_s
    assert len(applied) == 1 and writer.depth() == 2
    assert redis_client.get(keys.record_buffer_lock()) == "another-flusher"  # not deleted by the loser
    redis_client.delete(keys.record_buffer(), keys.record_buffer_lock())


def test_the_heartbeat_outlives_a_redis_that_refuses_writes(database: str, private_redis: Any) -> None:
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    heartbeat = Heartbeat(client, "worker-a/1", interval_s=0.1)
    heartbeat.start()
    try:
        time.sleep(0.3)
        assert client.exists(keys.worker_alive("worker-a/1"))
        # When Redis refuses every write (out of memory under noeviction)
        client.config_set("maxmemory", 1)
        with pytest.raises(REDIS_DOWN):
            client.set("probe", "x")
        time.sleep(0.5)
        assert heartbeat.is_alive() and heartbeat.failing == "OutOfMemoryError"
        # Then once Redis takes writes again, the heartbeat is back without a restart
        client.config_set("maxmemory", 0)
        client.delete(keys.worker_alive("worker-a/1"))
        deadline = time.monotonic() + 3
        while not client.exists(keys.worker_alive("worker-a/1")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.exists(keys.worker_alive("worker-a/1")) and heartbeat.failing is None
    finally:
        heartbeat.stop()
        heartbeat.join(5)


def test_a_breaker_whose_redis_refuses_writes_falls_back_as_if_redis_were_down(private_redis: Any) -> None:
    from ultra_tasks import CircuitBreaker

    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    breaker = CircuitBreaker(f"oom-{uuid.uuid4().hex[:6]}", redis_client=client, redis_down_policy="local")
    client.config_set("maxmemory", 1)
    try:
        # the call goes through on the in-process breaker instead of failing with OutOfMemoryError
        with breaker:
            answered = "answer"
        assert answered == "answer"
    finally:
        client.config_set("maxmemory", 0)


def test_a_renewal_racing_the_run_that_parked_its_job_leaves_it_parked(
    database: str, redis_client: redis.Redis
) -> None:
    job_id, _ = _job()
    got = _leases(redis_client).acquire(job_id, "w/1")
    assert isinstance(got, Acquired)
    assert records.mark_parked(job_id, 60, "breaker open", token=got.lease.token, attempts=0)
    # the heartbeat took its list of leases just before the run parked the job and gave its lease back
    lease = (job_id, "w/1", got.lease.token, 0)
    assert records.renew_leases([lease], utcnow() + timedelta(seconds=30)) == {job_id}
    assert records.get_job(job_id).status == "parked"


def test_a_run_that_parks_before_calling_leaves_the_jobs_calls_as_they_were(
    database: str, redis_client: redis.Redis
) -> None:
    # The first call is counted when the lease is taken (one round trip less per job); a run that makes
    # no call gives it back
    job_id, _ = _job()
    leases = _leases(redis_client)
    first = leases.acquire(job_id, "w/1")
    assert isinstance(first, Acquired) and first.lease.charged == 0 and first.lease.precounted
    leases.release(first.lease, final=False)
    again = leases.acquire(job_id, "w/1")
    assert isinstance(again, Acquired) and again.lease.charged == 0
    assert leases.begin_call(again.lease) == 1 and again.lease.charged == 1
    leases.release(again.lease, final=False)
    third = leases.acquire(job_id, "w/1")
    assert isinstance(third, Acquired) and third.lease.charged == 1


def test_while_redis_is_down_calls_are_counted_and_fenced_by_the_job_table(
    database: str, private_redis: Any
) -> None:
    client = redis.Redis.from_url(
        private_redis.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    leases = Leases(client, get_settings())
    job_id, _ = _job()
    got = leases.acquire(job_id, "w/1")
    assert isinstance(got, Acquired)
    assert leases.begin_call(got.lease) == 1  # counted when the lease was taken
    # When Redis goes away mid-run, the next call is counted in the job table, under the lease's token
    private_redis.stop()
    assert leases.begin_call(got.lease) == 2
    assert records.get_job(job_id).attempts >= 1
    # and once a newer run holds the row, this run can call no more
    with transaction() as conn:
        conn.execute(
            update(records.jobs).where(records.jobs.c.id == job_id).values(lease_token=got.lease.token + 1)
        )
    with pytest.raises(LeaseLostError):
        leases.begin_call(got.lease)


def test_duplicate_deliveries_reaching_one_process_at_once_take_the_lease_once(
    database: str, redis_client: redis.Redis
) -> None:
    import threading

    # Given eight copies of a job's message taken by eight threads of one worker process at once
    job_id, _ = _job()
    leases = _leases(redis_client)
    barrier = threading.Barrier(8)
    got: list[object] = []

    def deliver() -> None:
        barrier.wait()
        got.append(leases.acquire(job_id, "w/1"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # Then exactly one runs it: a second taking the lease over would leave the first's call unfenced
    acquired = [g for g in got if isinstance(g, Acquired)]
    assert len(acquired) == 1 and len(got) == 8
    assert leases.begin_call(acquired[0].lease) == 1
