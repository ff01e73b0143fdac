"""The queue tests again, on RabbitMQ (``BROKER_URL=amqp://...``): priority order, outbox, backpressure,
idempotency, deadlines, dead letters, the starvation guard, validation, the seed's request queue and the
parking of the operation mode.

They run in a pytest session of their own, because the Celery app reads its broker when it is imported;
that session uses its own Redis database, SQL database and fake provider, so it shares nothing with this
one but the RabbitMQ server.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ON_AMQP, ON_CI, ROOT, TEST_REDIS_URL

RABBITMQ_URL = os.environ.get("ULTRA_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE_TESTS = [
    "tests/integration/test_job_path.py",
    "tests/integration/test_priority_order.py",
    "tests/integration/test_queue_outbox.py",
    "tests/integration/test_starvation_guard.py",
    "tests/integration/test_submit_validation.py",
    "tests/integration/test_request_queue.py",
    "tests/integration/test_mode_effects.py",
]

#: the reason of the one queue test that does not apply on RabbitMQ (a Redis transport window)
RABBITMQ_ONLY_SKIP = "RabbitMQ has no window"

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(ON_AMQP, reason="this session already runs on RabbitMQ"),
]


def _rabbitmq_reachable() -> bool:
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as conn:
            conn.connect()
        return True
    except Exception:
        return False


def _other_redis_db(url: str) -> str:
    base, _, db = url.rpartition("/")
    return f"{base}/{15 if db != '15' else 12}"


def test_the_queue_tests_pass_on_rabbitmq() -> None:
    if not _rabbitmq_reachable():
        if ON_CI:
            pytest.fail(f"RabbitMQ is not reachable at {RABBITMQ_URL.split('@')[-1]}")
        pytest.skip("RabbitMQ is not reachable")
    # a session of its own, not an xdist worker's: its own Redis database and namespace
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "ULTRA_TEST_NAMESPACE")}
    env = {
        **env,
        "ULTRA_TEST_BROKER_URL": RABBITMQ_URL,
        "ULTRA_TEST_REDIS_URL": _other_redis_db(TEST_REDIS_URL),
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *QUEUE_TESTS, "-q", "-p", "no:cacheprovider", "-rfEs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in summary, summary
    # nothing skipped but what does not apply to RabbitMQ
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all(RABBITMQ_ONLY_SKIP in line for line in skips), skips
