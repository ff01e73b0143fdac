"""`ultra submit` says why a job waits while it waits, a timeout exits 4 with one line and no traceback
(`--debug` adds one), and `ultra status --watch` refreshes until Ctrl-C: real Redis, database and worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT
from conftest import ultra_cli as ultra

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("database", "redis_client")]


@pytest.fixture(scope="module", autouse=True)
def nothing_left_waiting(redis_client: Any, database: str) -> Iterator[None]:
    """These tests leave jobs no worker took: their messages are purged and their rows ended after the
    module, so a later test of the session (one counting jobs or metrics) does not run or count them."""
    from ultra_tasks.celery_app import app
    from ultra_tasks.clock import utcnow
    from ultra_tasks.jobs import records
    from ultra_tasks.jobs.models import JobStatus

    started = utcnow()
    yield
    app.control.purge()
    for status in (JobStatus.QUEUED, JobStatus.PARKED):
        for job in records.list_jobs(limit=500, status=status):
            if job.created_at.replace(tzinfo=started.tzinfo) >= started:
                records.mark_expired(job.id)


@pytest.fixture
def no_live_worker(redis_client: Any) -> None:
    """No worker of an earlier test is still taken for alive (a killed one's key lingers ALIVE_TTL_S)."""
    from ultra_tasks import keys

    for key in redis_client.scan_iter(match=keys.worker_alive("*")):
        redis_client.delete(key)


@pytest.fixture
def emergency() -> Iterator[None]:
    assert ultra("mode", "set", "EMERGENCY", "--for", "600").returncode == 0
    yield
    assert ultra("mode", "clear").returncode == 0


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


@pytest.mark.usefixtures("no_live_worker")
def test_submit_with_no_worker_says_no_llm_worker_consumes_its_queue_and_a_timeout_exits_4() -> None:
    out = ultra("submit", f"hello {time.time()}", "--timeout", "4")
    assert out.returncode == 4, out.stderr
    assert "waiting: no live llm worker consumes llm.default" in out.stderr
    assert "ultra worker llm" in out.stderr
    # the error line repeats why, once, and nothing else reaches the user
    assert "has no result after 4s: no live llm worker consumes llm.default" in out.stderr
    no_traceback(out.stderr)


@pytest.mark.usefixtures("emergency")
def test_submit_under_emergency_says_the_mode_holds_the_job_back(worker_factory: Any) -> None:
    worker_factory(concurrency=2)
    out = ultra("submit", f"held back {time.time()}", "--priority", "low", "--timeout", "6")
    assert out.returncode == 4, out.stderr
    assert "waiting: the operation mode is EMERGENCY: only llm.high runs" in out.stderr
    assert "no live" not in out.stderr  # a worker consumes llm.low: the mode is the reason
    no_traceback(out.stderr)


@pytest.mark.usefixtures("no_live_worker")
def test_debug_adds_the_traceback_to_a_timeout() -> None:
    out = ultra("--debug", "submit", f"debug me {time.time()}", "--timeout", "1")
    assert out.returncode == 4
    assert "Traceback" in out.stderr and "JobTimeoutError" in out.stderr
    assert ultra("submit", "x", "--timeout", "1", "--no-wait").returncode == 0


def test_status_watch_refreshes_until_ctrl_c_and_exits_0() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ultra_tasks.cli", "status", "--watch", "--interval", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    time.sleep(4)
    assert proc.poll() is None  # still refreshing
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "mode:" in stdout and "every 0.5s" in stdout
    no_traceback(stderr)


def test_status_watch_refuses_an_interval_under_half_a_second() -> None:
    out = ultra("status", "--watch", "--interval", "0.1")
    assert out.returncode == 2 and "--interval" in out.stderr
