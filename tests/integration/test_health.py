"""Health checks (bounded, breaker-aware) and the beat-driven mode evaluation with real beat and workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from ultra_tasks import CircuitBreaker, HealthCheck, HealthStatus, LLMProviderHealthCheck, SystemOperationMode
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord
from ultra_tasks.health.checks import ProviderProbe

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("closed_provider_breakers", "database")]


def test_provider_check_is_ok_then_critical_when_the_provider_fails(fake_provider: Any) -> None:
    check = LLMProviderHealthCheck("anthropic", ProviderProbe("anthropic", min_interval_s=0))
    healthy = asyncio.run(check.run())
    assert healthy.status == "ok" and healthy.details["response_time_ms"] > 0
    fake_provider.add_fault("status", api="anthropic", status=503)
    failing = asyncio.run(check.run())
    assert failing.status == "critical" and "unavailable" in failing.message


def test_provider_check_skips_the_probe_while_its_breaker_is_open(fake_provider: Any) -> None:
    CircuitBreaker("openai").force_open()
    check = LLMProviderHealthCheck("openai", ProviderProbe("openai", min_interval_s=0))
    status = asyncio.run(check.run())
    assert status.status == "critical" and "circuit breaker is open" in status.message
    assert fake_provider.stats()["by_api"]["openai"] == 0


def test_a_hung_check_is_bounded_by_its_timeout() -> None:
    class Hung(HealthCheck):
        async def check_health(self) -> HealthStatus:
            await asyncio.sleep(30)
            return HealthStatus("ok", "never")

    started = time.monotonic()
    status = asyncio.run(Hung("hung", "test", timeout_s=0.3).run())
    assert status.status == "critical" and "timed out after 0.3s" in status.message
    assert time.monotonic() - started < 2


def _beat(tmp: Path, n: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(tmp / f"beat{n}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "ultra_tasks",
            "beat",
            "-s",
            str(tmp / f"beat{n}"),
            "--loglevel",
            "INFO",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def test_beat_health_checks_drive_the_mode_and_two_beats_run_each_check_once_per_interval(
    worker_factory: Any, fake_provider: Any, redis_client: Any, tmp_path: Path
) -> None:
    with session_scope() as s:
        for model in (ComponentStatus, ModeTransition, OperationModeRecord):
            s.execute(delete(model))
    redis_client.delete("ultra-test:mode:current", "ultra-test:health:runs")
    interval = 1.0
    env = {**os.environ, "HEALTH_CHECK_INTERVAL": str(interval)}
    worker_factory(queues="ops", concurrency=2, env={"HEALTH_CHECK_INTERVAL": str(interval)})
    worker_factory(concurrency=2)
    beats = [_beat(tmp_path, n, env) for n in (1, 2)]
    mode = SystemOperationMode()
    try:
        started = time.monotonic()
        # Given the stack settled: the first checks may catch a worker still starting (DEGRADED), and
        # recovery then takes two good evaluations in a row
        deadline = started + 30
        while mode.current_mode != "NORMAL" or mode._record() is None:
            assert time.monotonic() < deadline, (mode.current_mode, mode.degraded_components)
            time.sleep(0.2)
        settled = len(mode.history())
        # When one provider starts failing, the mode is DEGRADED within two intervals (+ scheduling slack)
        fake_provider.add_fault("status", api="openai", status=503)
        failing_since = time.monotonic()
        while mode.current_mode != "DEGRADED" and time.monotonic() < failing_since + 10:
            time.sleep(0.1)
        assert mode.current_mode == "DEGRADED"
        assert time.monotonic() - failing_since <= 2 * interval + 2.0
        transition = mode.history()[0]
        assert len(mode.history()) == settled + 1
        assert (transition["from"], transition["to"]) == ("NORMAL", "DEGRADED")
        assert any(r["component"] == "llm_provider_openai" for r in transition["reasons"])
        # Two beats send every entry twice; each interval's checks ran once
        elapsed = time.monotonic() - started
        runs = int(redis_client.get("ultra-test:health:runs") or 0)
        assert 1 <= runs <= elapsed / interval + 1, (runs, elapsed)
        sent = sum(
            (tmp_path / f"beat{n}.log").read_text().count("Scheduler: Sending due task health-check")
            for n in (1, 2)
        )
        assert sent > runs
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
            beat.wait(10)
        mode.close()
