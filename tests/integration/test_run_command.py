"""The README's first command: the whole stack plus a demo batch, on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_run_command_starts_the_stack_and_shows_demo_results_then_stops_cleanly(
    tmp_path: Path, redis_client: object
) -> None:
    # embedded default: SQLite; no API key and no USE_FAKE_PROVIDER: the run command chooses the fake itself
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "USE_FAKE_PROVIDER")}
    env.update(
        VENV=str(Path(sys.executable).parent.parent),  # reuse this environment instead of reinstalling
        ULTRA_VAR_DIR=str(tmp_path / "var"),
        FAKE_PROVIDER_URL=f"http://127.0.0.1:{_free_port()}",
        FLOWER_PORT=str(_free_port()),
        STATUS_PORT=str(_free_port()),
        API_PORT=str(_free_port()),
        COLUMNS="200",
    )
    out = subprocess.run(
        [str(ROOT / "scripts" / "run"), "--exit-after-demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "choosing the local fake provider" in out.stdout and "USE_FAKE_PROVIDER=1" in out.stdout
    for name in ("fake-provider", "worker-llm", "worker-ops", "beat", "flower", "status", "api"):
        assert f"started {name}" in out.stdout
    assert "demo batch" in out.stdout
    assert out.stdout.count("openai/") == 3 and out.stdout.count("anthropic/") == 3
    assert "failed" not in out.stdout
    assert (tmp_path / "var" / "ultra.db").exists()  # SQLite, the embedded default
    logs = tmp_path / "var" / "log"
    assert "ready" in (logs / "worker-llm.log").read_text()
    assert "Traceback" not in "".join(p.read_text() for p in logs.glob("*.log"))
