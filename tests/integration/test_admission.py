"""The admission bound (jobs/admission.py): QUEUE_MAX_SIZE holds exactly under concurrent producers, in
threads and in separate processes, with Redis up and with Redis down; lower priorities are shed first
(QUEUE_SHED_AT); slots come back when jobs end, stay while they are parked or their worker died, and the
sweeper frees what a dead process left behind.

Every test runs on a job table and an admission namespace of its own, so the jobs other tests left
waiting do not count against its bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ON_AMQP, TEST_BROKER_URL, TEST_REDIS_URL, _free_port, ultra_cli, wait_for
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url

from ultra_tasks import JobStatus, SystemOperationMode, keys, submit
from ultra_tasks.config import reset_settings
from ultra_tasks.db.engine import dispose_engines, transaction
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.errors import JobExpiredError, QueueFullError
from ultra_tasks.health import tasks as ops_tasks
from ultra_tasks.jobs import admission, records

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("database")]

BOUND = 50
SUBMITS = 80
PRODUCERS = 8


@dataclass
class Store:
    """The test's own job table (``url``) and admission namespace."""

    url: str
    namespace: str
    client: redis.Redis

    def held(self) -> int:
        return admission.fill(self.client).total

    def admitted_ids(self) -> set[str]:
        return {str(m) for p in admission.PRIORITIES for m in self.client.zrange(keys.admitted(p), 0, -1)}

    def rows(self) -> int:
        return records.count_jobs()

    def empty(self) -> None:
        """No jobs and no slots (the next admission rebuilds the sets from the empty table)."""
        with transaction() as conn:
            conn.execute(delete(records.jobs))
        self.client.delete(*keys.admission_keys())


def _new_database(tmp_path: Path, dialect: str) -> tuple[str, Callable[[], None]]:
    base = os.environ.get("ULTRA_TEST_DATABASE_URL")
    if dialect == "sqlite" or not base:
        return f"sqlite:///{tmp_path / 'admission.db'}", lambda: None
    name = f"ultra_adm_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def _drop_llm_messages() -> None:
    """Messages this test published stay out of the queues the next tests' workers read."""
    from ultra_tasks.broker import consumed_queues
    from ultra_tasks.celery_app import app

    with app.connection_for_write() as conn:
        for name in consumed_queues(list(keys.LLM_QUEUES)):
            conn.default_channel.queue_purge(name)


@contextlib.contextmanager
def _open_store(tmp_path: Path, dialect: str, max_size: int) -> Iterator[Store]:
    url, drop = _new_database(tmp_path, dialect)
    namespace = f"{os.environ['ULTRA_REDIS_NAMESPACE']}-adm-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        {"DATABASE_URL": url, "ULTRA_REDIS_NAMESPACE": namespace, "QUEUE_MAX_SIZE": str(max_size)}
    )
    reset_settings()
    upgrade_schema()
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    _drop_llm_messages()
    try:
        yield Store(url, namespace, client)
    finally:
        _drop_llm_messages()
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)
        client.close()
        drop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with _open_store(tmp_path, "session", BOUND) as opened:
        yield opened


def _submit_concurrently(threads: int, per_thread: int, priority: str = "high") -> tuple[int, int, list[str]]:
    """``threads`` producers released at once, each submitting ``per_thread`` jobs: (accepted, refused,
    other errors)."""
    barrier = threading.Barrier(threads)
    lock = threading.Lock()
    counts = {"accepted": 0, "refused": 0}
    errors: list[str] = []

    def produce(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            try:
                submit(f"producer {n} job {i}", model="gpt-4o", priority=priority)
                outcome = "accepted"
            except QueueFullError:
                outcome = "refused"
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                counts[outcome] += 1

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return counts["accepted"], counts["refused"], errors


def test_80_concurrent_submits_from_threads_against_a_bound_of_50_accept_exactly_50_every_time(
    store: Store,
) -> None:
    accepted_per_round = []
    for _ in range(3):
        store.empty()
        accepted, refused, errors = _submit_concurrently(PRODUCERS, SUBMITS // PRODUCERS)
        assert errors == []
        accepted_per_round.append(accepted)
        assert (accepted, refused) == (BOUND, SUBMITS - BOUND)
        assert store.rows() == BOUND  # nothing of a refused submit was recorded
        assert store.held() == BOUND
    print(f"accepted per round (threads): {accepted_per_round}")


PRODUCER = """
import json, os, sys, time
from ultra_tasks import submit
from ultra_tasks.errors import QueueFullError
from ultra_tasks.jobs import admission
from ultra_tasks.db.migrate import upgrade_schema

go, n = sys.argv[1], int(sys.argv[2])
upgrade_schema()
admission.fill()  # connections are open before the start
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
accepted = refused = 0
for i in range(n):
    try:
        submit(f"process {os.getpid()} job {i}", model="gpt-4o", priority="high")
        accepted += 1
    except QueueFullError:
        refused += 1
print(json.dumps({"accepted": accepted, "refused": refused}), flush=True)
"""


def _submit_from_processes(tmp_path: Path, processes: int, per_process: int) -> tuple[int, int]:
    go = tmp_path / f"go-{uuid.uuid4().hex}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(go), str(per_process)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        accepted = refused = 0
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            counts = json.loads(out.strip().splitlines()[-1])
            accepted += counts["accepted"]
            refused += counts["refused"]
        return accepted, refused
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_80_concurrent_submits_from_separate_processes_against_a_bound_of_50_accept_exactly_50(
    store: Store, tmp_path: Path
) -> None:
    accepted_per_round = []
    for _ in range(2):
        store.empty()
        accepted, refused = _submit_from_processes(tmp_path, PRODUCERS, SUBMITS // PRODUCERS)
        accepted_per_round.append(accepted)
        assert (accepted, refused) == (BOUND, SUBMITS - BOUND)
        assert store.rows() == BOUND
        assert store.held() == BOUND
    print(f"accepted per round (processes): {accepted_per_round}")


@pytest.mark.parametrize("dialect", ["session", "sqlite"])
def test_with_redis_down_the_job_table_enforces_the_same_exact_bound(tmp_path: Path, dialect: str) -> None:
    if dialect == "sqlite" and not os.environ.get("ULTRA_TEST_DATABASE_URL"):
        pytest.skip("the session's database is SQLite already")
    if ON_AMQP:
        pytest.skip("publishes onto the session's Redis broker")
    with _open_store(tmp_path, dialect, BOUND) as opened:
        # Given a state Redis (REDIS_URL) that cannot be reached; the broker and result backend can
        os.environ.update(
            {
                "REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
                "BROKER_URL": TEST_BROKER_URL or TEST_REDIS_URL,
                "RESULT_BACKEND_URL": TEST_REDIS_URL,
            }
        )
        reset_settings()
        for _ in range(2):
            with transaction() as conn:
                conn.execute(delete(records.jobs))
            accepted, refused, errors = _submit_concurrently(PRODUCERS, SUBMITS // PRODUCERS)
            assert errors == []
            assert (accepted, refused) == (BOUND, SUBMITS - BOUND)
            assert opened.rows() == BOUND


def test_low_priority_is_refused_at_its_share_while_higher_priorities_are_still_admitted(
    store: Store,
) -> None:
    os.environ.update({"QUEUE_MAX_SIZE": "10", "QUEUE_SHED_AT": "low=0.5,default=0.8"})
    reset_settings()

    def fill(priority: str) -> tuple[int, QueueFullError]:
        admitted = 0
        while True:
            try:
                submit(f"{priority} {admitted}", model="gpt-4o", priority=priority)
                admitted += 1
            except QueueFullError as exc:
                return admitted, exc

    # low work fills the queues up to its share: 50% of 10
    admitted, refusal = fill("low")
    assert admitted == 5
    assert (refusal.priority, refusal.threshold, refusal.share, refusal.depth, refusal.limit) == (
        "low",
        5,
        0.5,
        5,
        10,
    )
    assert "low is refused from 5 (50% of QUEUE_MAX_SIZE 10, QUEUE_SHED_AT)" in str(refusal)
    # default work still gets in, up to 80%; high work up to the whole bound
    assert fill("default")[0] == 3
    admitted, refusal = fill("high")
    assert admitted == 2
    assert (refusal.priority, refusal.threshold, refusal.depth) == ("high", 10, 10)
    assert store.rows() == 10
    assert admission.fill(store.client).held == {"high": 2, "default": 3, "low": 5}


def test_a_final_write_frees_the_slot_and_a_dead_letter_retried_is_admitted_again(store: Store) -> None:
    os.environ["QUEUE_MAX_SIZE"] = "2"
    reset_settings()
    first = submit("first", model="gpt-4o", priority="high")
    second = submit("second", model="gpt-4o", priority="high")
    with pytest.raises(QueueFullError):
        submit("one too many", model="gpt-4o", priority="high")
    # the first fails (what a worker writes): its slot comes back, and another job takes it
    assert records.mark_failed(first.id, {"type": "ProviderBadRequestError", "message": "no"})
    assert store.held() == 1
    third = submit("third", model="gpt-4o", priority="high")
    # retried from the dead letter, the first job needs a slot again: there is none
    with pytest.raises(QueueFullError):
        first.retry()
    assert first.status() is JobStatus.FAILED
    # a final write applied twice (a replayed buffer) frees one slot, not two
    assert records.mark_succeeded(second.id, {"text": "ok"}, token=7)
    assert records.mark_succeeded(second.id, {"text": "ok"}, token=7)
    assert store.held() == 1
    first.retry()
    assert first.status() is JobStatus.QUEUED
    assert store.admitted_ids() == {first.id, third.id}


def test_the_sweeper_frees_slots_a_dead_process_left_and_counts_live_jobs_redis_lost(store: Store) -> None:
    os.environ["QUEUE_MAX_SIZE"] = "3"
    reset_settings()
    handles = [submit(f"job {i}", model="gpt-4o", priority="high") for i in range(3)]
    # a worker killed between its final write and giving the slot back: the slot is still taken
    assert records.mark_succeeded(handles[0].id, {"text": "done"})
    store.client.zadd(keys.admitted("high"), {handles[0].id: 0})
    # a producer that took a slot and died before recording its job, long ago and just now
    store.client.zadd(keys.admitted("high"), {"died-long-ago": 0})
    with pytest.raises(QueueFullError):
        submit("no room", model="gpt-4o", priority="high")
    ops_tasks.sweep()
    assert store.admitted_ids() == {handles[1].id, handles[2].id}
    # a submit between its slot and its row is not taken for a dead one (the grace period)
    store.client.zadd(keys.admitted("high"), {"recording-now": int(time.time() * 1000)})
    admission.reconcile()
    assert "recording-now" in store.admitted_ids()
    store.client.zrem(keys.admitted("high"), "recording-now")
    # Redis lost the sets (a restart, a flush): the live jobs are counted again before anyone is admitted
    store.client.delete(*keys.admission_keys())
    submit("the last slot", model="gpt-4o", priority="high")
    with pytest.raises(QueueFullError):
        submit("no room after the rebuild", model="gpt-4o", priority="high")
    assert store.rows() == 4


@pytest.mark.usefixtures("closed_provider_breakers")
def test_slots_come_back_as_jobs_finish_or_expire_and_stay_while_parked(
    store: Store, worker_factory: Any
) -> None:
    # a job past its deadline before any worker runs: it ends expired and gives its slot back
    late = submit("too late", model="gpt-4o-mini", priority="low", expires_in=0.2)
    time.sleep(0.4)
    mode = SystemOperationMode()
    try:
        worker_factory(concurrency=2)
        with pytest.raises(JobExpiredError):
            late.result(timeout=30)
        finished = [submit(f"finish {i}", model="gpt-4o-mini") for i in range(3)]
        for handle in finished:
            handle.result(timeout=30)
        wait_for(lambda: store.held() == 0, 10, "the slots of the ended jobs")

        # EMERGENCY parks a low job: parked, it is work the system holds, and keeps its slot
        mode.set_override("EMERGENCY", 120, reason="test")
        time.sleep(1.3)  # workers re-read the mode within a second
        parked = submit("parked", model="gpt-4o-mini", priority="low")
        wait_for(lambda: parked.status() is JobStatus.PARKED, 20, "the job to be parked")
        assert store.admitted_ids() == {parked.id}
        # released when the mode recovers, it runs, ends and gives the slot back
        mode.clear_override()
        parked.result(timeout=30)
        wait_for(lambda: store.held() == 0, 10, "the parked job's slot")
    finally:
        mode.clear_override()
        mode.close()


@pytest.mark.usefixtures("closed_provider_breakers")
def test_a_job_whose_worker_is_killed_keeps_its_slot_until_it_ends_on_another_worker(
    store: Store, worker_factory: Any, fake_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.environ["JOB_LEASE_TTL"] = "3"
    reset_settings()
    slow = fake_provider.add_fault("latency", model="gpt-4o-mini", ms=20_000)
    doomed = worker_factory(concurrency=1)
    handle = submit("outlives its worker", model="gpt-4o-mini")
    wait_for(lambda: handle.status() is JobStatus.RUNNING, 30, "the job to start")
    doomed.stop(signal.SIGKILL)
    # its worker is gone; the job is still work the system holds
    assert store.admitted_ids() == {handle.id}
    fake_provider.remove_fault(slow)
    worker_factory(concurrency=1)
    monkeypatch.setattr(ops_tasks, "LEASE_GRACE_S", 0.0)
    time.sleep(3.5)  # the dead run's lease lapses
    ops_tasks.sweep()  # republishes the job whose lease nobody renews
    assert handle.result(timeout=60).text == "echo: outlives its worker"
    wait_for(lambda: store.held() == 0, 10, "the slot of the job that ended")


def _hold(store: Store, n: int) -> None:
    """``n`` slots taken by jobs admitted just now (within the grace period, so nothing frees them)."""
    now_ms = int(time.time() * 1000)
    store.client.zadd(keys.admitted("high"), {f"held-{i}": now_ms for i in range(n)})


def test_a_batch_waits_for_room_at_its_own_priority_and_stops_there_with_the_threshold(
    store: Store, tmp_path: Path
) -> None:
    os.environ.update({"QUEUE_MAX_SIZE": "10", "QUEUE_SHED_AT": "low=0.7,default=0.9,high=1.0"})
    reset_settings()
    _hold(store, 8)
    low = tmp_path / "low.jsonl"
    low.write_text(json.dumps({"prompt": "bulk", "model": "gpt-4o", "priority": "low"}) + "\n")
    high = tmp_path / "high.jsonl"
    high.write_text(json.dumps({"prompt": "urgent", "model": "gpt-4o", "priority": "high"}) + "\n")
    # low work finds no room at 8 of 10 (its threshold is 7): the batch waits, then stops saying why
    refused = ultra_cli("submit", "--batch", str(low), "--timeout", "1")
    assert refused.returncode == 7, refused.stderr
    assert "low is refused from 7 (70% of QUEUE_MAX_SIZE 10" in refused.stderr
    # high work still has room
    accepted = ultra_cli("submit", "--batch", str(high), "--timeout", "1")
    assert accepted.returncode == 0, accepted.stderr
    assert store.rows() == 1 and store.held() == 9


def test_the_request_spool_sheds_low_priority_requests_first(tmp_path: Path) -> None:
    from ultra_tasks.jobs.queue import PersistentRequestQueue, RetryableRequest

    queue = PersistentRequestQueue(storage_path=tmp_path / "spool.jsonl", max_size=10)
    entry = RetryableRequest("llm.generate", ["spooled", "gpt-4o"]).to_dict()
    down = RuntimeError("broker and database down")

    def spool(level: str) -> int:
        spooled = 0
        while True:
            try:
                queue._spool(entry, level, str(uuid.uuid4()), down)
                spooled += 1
            except QueueFullError as exc:
                assert exc.priority == level and "PersistentRequestQueue max_size" in str(exc)
                return spooled

    assert spool("low") == 7
    assert spool("default") == 2
    assert spool("high") == 1
    assert queue.pending() == 10


def test_metrics_and_ultra_status_show_the_fill_against_each_threshold(store: Store) -> None:
    from ultra_tasks.metrics.collector import FleetCollector

    os.environ.update({"QUEUE_MAX_SIZE": "10", "QUEUE_SHED_AT": "low=0.5,default=0.8"})
    reset_settings()
    for i in range(3):
        submit(f"high {i}", model="gpt-4o", priority="high")
    for i in range(2):
        submit(f"low {i}", model="gpt-4o", priority="low")

    collector = FleetCollector()
    samples = {
        (s.name, s.labels.get("priority")): s.value
        for family in collector.collect()
        if family.name.startswith("ultra_queue_")
        for s in family.samples
    }
    assert samples[("ultra_queue_admitted", "high")] == 3 and samples[("ultra_queue_admitted", "low")] == 2
    assert samples[("ultra_queue_admission_limit", "low")] == 5
    assert samples[("ultra_queue_admission_limit", "default")] == 8
    assert samples[("ultra_queue_admission_limit", "high")] == 10
    assert samples[("ultra_queue_max_size", None)] == 10
    assert samples[("ultra_queue_fill_ratio", None)] == 0.5

    out = ultra_cli("status", "--json")
    assert json.loads(out.stdout)["admission"] == {
        "held": 5,
        "max_size": 10,
        "fill": 0.5,
        "by_priority": {"high": 3, "default": 0, "low": 2},
        "thresholds": {
            "high": {"share": 1.0, "limit": 10, "room": 5},
            "default": {"share": 0.8, "limit": 8, "room": 3},
            "low": {"share": 0.5, "limit": 5, "room": 0},
        },
    }
    text = ultra_cli("status").stdout
    assert "admission: 5 of QUEUE_MAX_SIZE 10 held (50% full)" in text
