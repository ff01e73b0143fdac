"""Job retention against the real database: finished jobs older than the cutoff leave the job table in
small batches, each committed on its own; waiting jobs stay whatever their age; a dry run deletes
nothing; operators purge with `ultra jobs purge`, and `ultra status` shows what the table keeps."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import ultra_cli as ultra
from sqlalchemy import delete, func, select, text, update

from ultra_tasks.clock import utcnow
from ultra_tasks.config import reset_settings
from ultra_tasks.db.engine import get_engine, transaction
from ultra_tasks.health.tasks import retention
from ultra_tasks.jobs import records
from ultra_tasks.jobs.models import JobStatus
from ultra_tasks.jobs.records import jobs
from ultra_tasks.jobs.retention import purge_finished

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("database", "_made_rows_removed")]

#: the rows these tests make are far older than anything the rest of the session writes
AGE = timedelta(days=400)
CUTOFF_S = 365 * 86400.0


_made: list[str] = []


@pytest.fixture
def _made_rows_removed() -> Iterator[None]:
    """The rows a test made go after it: an old queued row left behind would be published by a later
    test's sweep."""
    yield
    with transaction() as conn:
        conn.execute(delete(jobs).where(jobs.c.id.in_(_made)))
    _made.clear()


def _job(status: JobStatus, age: timedelta, tag: str) -> str:
    """A job row in ``status``, created (and, when final, finished) ``age`` ago."""
    job_id = str(uuid.uuid4())
    _made.append(job_id)
    at = utcnow() - age
    records.insert_job(
        job_id=job_id,
        priority="default",
        queue="llm.default",
        model="gpt-4o-mini",
        request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": tag}]},
        now=at,
    )
    with transaction() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=status.value, finished_at=at if status.is_final else None, updated_at=at)
        )
    return job_id


def _existing(ids: list[str]) -> set[str]:
    with transaction() as conn:
        return set(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids))).scalars())


def test_retention_deletes_old_finished_jobs_and_keeps_recent_ones_and_every_waiting_job() -> None:
    tag = uuid.uuid4().hex
    old_final = [_job(s, AGE, tag) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.EXPIRED)]
    old_waiting = [_job(s, AGE, tag) for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PARKED)]
    recent_final = [_job(JobStatus.SUCCEEDED, timedelta(days=10), tag)]

    report = purge_finished(CUTOFF_S, pause_s=0)

    assert report.deleted >= 3 and not report.dry_run
    left = _existing(old_final + old_waiting + recent_final)
    assert left == set(old_waiting + recent_final)


def test_retention_commits_each_small_batch_before_the_next_so_other_writers_never_wait_on_it() -> None:
    tag = uuid.uuid4().hex
    ids = [_job(JobStatus.SUCCEEDED, AGE + timedelta(minutes=i), tag) for i in range(25)]
    other = get_engine()
    seen: list[tuple[int, int, int, bool]] = []

    def between_batches(batch: int, deleted: int) -> None:
        # Another connection, while the purge is between two batches: the batch it just made is already
        # committed (gone for everyone), and a row still due is not locked by anything (a write to it
        # goes through at once; on PostgreSQL it would fail after 500 ms of waiting on a lock).
        with other.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL lock_timeout = '500ms'"))
            remaining = conn.execute(
                select(func.count()).select_from(jobs).where(jobs.c.id.in_(ids))
            ).scalar_one()
            survivors = conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids))).scalars().all()
            written = bool(survivors) and (
                conn.execute(
                    update(jobs).where(jobs.c.id == survivors[0]).values(status_reason="touched")
                ).rowcount
                == 1
            )
        seen.append((batch, deleted, remaining, written or not survivors))

    report = purge_finished(CUTOFF_S, batch_rows=10, pause_s=0, on_batch=between_batches)

    assert _existing(ids) == set()
    assert report.batches == 3 and report.deleted == 25
    assert [(b, d, r) for b, d, r, _ in seen] == [(1, 10, 15), (2, 20, 5), (3, 25, 0)]
    assert all(ok for *_, ok in seen)
    # oldest first: the first batch took the oldest rows
    assert report.oldest_finished_at is not None and report.newest_finished_at is not None
    assert report.oldest_finished_at < report.newest_finished_at


def test_a_run_stops_at_its_cap_and_the_next_run_goes_on() -> None:
    tag = uuid.uuid4().hex
    ids = [_job(JobStatus.FAILED, AGE, tag) for _ in range(12)]

    first = purge_finished(CUTOFF_S, batch_rows=5, max_rows=7, pause_s=0)

    assert first.deleted == 7 and first.capped and len(_existing(ids)) == 5
    second = purge_finished(CUTOFF_S, batch_rows=5, max_rows=7, pause_s=0)
    assert second.deleted == 5 and not second.capped and _existing(ids) == set()


def test_a_dry_run_counts_what_would_go_and_deletes_nothing() -> None:
    tag = uuid.uuid4().hex
    ids = [_job(JobStatus.SUCCEEDED, AGE, tag) for _ in range(4)]
    waiting = _job(JobStatus.QUEUED, AGE, tag)

    report = purge_finished(CUTOFF_S, dry_run=True)

    assert report.dry_run and report.deleted >= 4 and report.batches == 0
    assert _existing([*ids, waiting]) == {*ids, waiting}


def test_the_beat_task_applies_job_retention_and_keeps_everything_when_it_is_none() -> None:
    tag = uuid.uuid4().hex
    ids = [_job(JobStatus.SUCCEEDED, AGE, tag) for _ in range(3)]

    os.environ["JOB_RETENTION"] = "none"
    reset_settings()
    assert retention.run() == 0
    assert _existing(ids) == set(ids)

    os.environ["JOB_RETENTION"] = "365d"
    reset_settings()
    assert retention.run() >= 3
    assert _existing(ids) == set()


def test_ultra_jobs_purge_deletes_with_a_duration_and_previews_with_dry_run() -> None:
    tag = uuid.uuid4().hex
    ids = [_job(JobStatus.EXPIRED, AGE, tag) for _ in range(3)]

    preview = ultra("jobs", "purge", "--older-than", "365d", "--dry-run", "--json")
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["would_delete"] >= 3
    assert _existing(ids) == set(ids)

    done = ultra("jobs", "purge", "--older-than", "8760h")
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout and "finished jobs" in done.stdout
    assert _existing(ids) == set()


@pytest.mark.parametrize("bad", ["30x", "-5d", "soon", "0d"])
def test_ultra_jobs_purge_refuses_a_bad_duration_naming_the_option(bad: str) -> None:
    out = ultra("jobs", "purge", "--older-than", bad)
    assert out.returncode == 2
    assert "--older-than" in out.stderr and bad in out.stderr


@pytest.mark.usefixtures("redis_client")
def test_status_shows_the_job_tables_size_and_its_oldest_kept_job() -> None:
    tag = uuid.uuid4().hex
    _job(JobStatus.QUEUED, AGE + timedelta(days=30), tag)
    # the oldest row kept, this test's or an older one another test of the session left
    with transaction() as conn:
        created = records._aware(conn.execute(select(func.min(jobs.c.created_at))).scalar_one())

    snap: dict[str, Any] = json.loads(ultra("status", "--json").stdout)

    table = snap["job_table"]
    assert table["rows"] >= 1 and table["retention_s"] == 30 * 86400.0
    assert table["oldest_created_at"] == created.isoformat()
    shown = ultra("status").stdout
    assert "job table" in shown and created.isoformat() in shown and "30d" in shown
    page = _status_page(snap)
    assert 'id="job-table"' in page and created.isoformat() in page


def _status_page(snap: dict[str, Any]) -> str:
    from ultra_tasks.status.web import render_page

    return render_page(snap)
