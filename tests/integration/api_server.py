"""Shared by the HTTP API tests: `ultra api` as a real subprocess on a free port, tenants' keys, and an
official ``openai`` SDK client pointed at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
from conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]


class ApiServer:
    """``ultra api`` on 127.0.0.1 and a free port, with this session's environment (plus ``env``)."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.log_path = log_dir / f"api-{self.port}.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ApiServer:
        argv = [sys.executable, "-m", "ultra_tasks.cli", "api", "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "API_KEY_CACHE_S": "0", **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/openapi.json")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"API not up within {timeout}s:\n{self.log()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def client(self, key: str, **kwargs: object) -> openai.OpenAI:
        """The official SDK with its retries off, so each test sees each answer the API gives."""
        return openai.OpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0, timeout=60, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def new_key(tenant: str, **options: object) -> str:
    """A fresh key of ``tenant`` (made in the session's database)."""
    from ultra_tasks.api.tenants import create_key

    return create_key(tenant, **options)[1]  # type: ignore[arg-type]
