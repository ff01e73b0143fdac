"""Shared by the status page tests: `ultra status-server` as a real subprocess on a free port, and helpers
that put the fleet's operation mode where a test wants it (and back)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]


class StatusServer:
    """``ultra status-server`` on 127.0.0.1 and a free port, with this session's environment."""

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.log_path = log_dir / f"status-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> StatusServer:
        argv = [sys.executable, "-m", "ultra_tasks.cli", "status-server", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"status server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"status server not up within {timeout}s:\n{self.log()}")

    def get(self, path: str, timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def force_normal_mode() -> Any:
    """Every known component reported ok and no override: the mode is NORMAL (recovery applies at once)."""
    from ultra_tasks import SystemOperationMode

    mode = SystemOperationMode()
    for component in mode.component_states():
        if component.status != "ok":
            mode.record_component(component.component, "ok", "reset by a test", kind=component.kind)
    mode.clear_override()
    assert mode.current_mode == SystemOperationMode.NORMAL, mode.degradation_reasons
    return mode
