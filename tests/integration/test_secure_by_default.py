"""Secure by default (issue 16): every HTTP service the project starts listens on loopback unless told
otherwise, beyond loopback each refuses to start without its guard (FLOWER_BASIC_AUTH of your own,
STATUS_TOKEN, --allow-remote), the status server asks for its token, and secrets never show on the status
page, its JSON, `ultra status`, `ultra config` or metrics labels. Real processes, real sockets (loopback
only), the session's Redis and database."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _free_port
from conftest import ultra_cli as ultra
from sqlalchemy import delete
from status_server import StatusServer

from ultra_tasks import SystemOperationMode
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ComponentStatus

pytestmark = [pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "status-token-" + uuid.uuid4().hex
DB_PASSWORD = "hunter2-" + uuid.uuid4().hex[:8]


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw))
    return found


def http(url: str, headers: dict[str, str] | None = None, timeout: float = 20.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if http(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not up within {timeout}s")


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses a test starts; each is stopped (SIGTERM, then SIGKILL) after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def start(background: list[subprocess.Popen[bytes]], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ultra_tasks.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=dict(os.environ),
            start_new_session=True,
        )
    background.append(proc)
    return proc


# --- loopback by default --------------------------------------------------------------------------------
@pytest.mark.usefixtures("redis_client")
def test_flower_started_by_ultra_listens_on_loopback_only_and_asks_for_credentials(
    background: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = _free_port()
    os.environ.pop("FLOWER_BASIC_AUTH", None)  # the local stack's default, fine on loopback
    proc = start(background, "flower", "--port", str(port), log=tmp_path / "flower.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck", proc)
    except AssertionError:
        raise AssertionError((tmp_path / "flower.log").read_text()[-3000:]) from None
    assert listening_addresses(port) == {"127.0.0.1"}
    assert http(f"http://127.0.0.1:{port}/api/workers")[0] == 401
    basic = "Basic " + base64.b64encode(b"ultra:ultra").decode()
    assert http(f"http://127.0.0.1:{port}/api/workers", {"Authorization": basic})[0] == 200


@pytest.mark.usefixtures("database", "redis_client")
def test_status_server_and_fake_provider_listen_on_loopback_only_by_default(
    background: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    server = StatusServer(tmp_path).start()
    try:
        assert listening_addresses(server.port) == {"127.0.0.1"}
    finally:
        server.stop()
    port = _free_port()
    proc = start(background, "fake-provider", "--port", str(port), log=tmp_path / "fake.log")
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    assert listening_addresses(port) == {"127.0.0.1"}


# --- beyond loopback only behind a guard ----------------------------------------------------------------
@pytest.mark.parametrize("auth", [None, "ultra:ultra", "admin:ultra", "admin: "])
def test_flower_beyond_loopback_with_default_or_empty_password_refuses_naming_FLOWER_BASIC_AUTH(
    auth: str | None,
) -> None:
    if auth is None:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
    else:
        os.environ["FLOWER_BASIC_AUTH"] = auth
    out = ultra("flower", "--host", "0.0.0.0", "--port", str(_free_port()), timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "FLOWER_BASIC_AUTH" in out.stderr and "Traceback" not in out.stderr


def test_flower_beyond_loopback_with_credentials_of_its_own_starts_without_them_on_its_command_line() -> None:
    os.environ["FLOWER_BASIC_AUTH"] = "admin:correct-horse-battery"
    out = ultra("flower", "--host", "0.0.0.0", "--port", "5999", "--print", timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--address=0.0.0.0" in out.stdout and "--port=5999" in out.stdout
    assert "correct-horse-battery" not in out.stdout  # Flower reads it from its environment


def test_flower_beyond_loopback_refuses_an_unauthenticated_api() -> None:
    os.environ["FLOWER_BASIC_AUTH"] = "admin:correct-horse-battery"
    os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    out = ultra("flower", "--host", "0.0.0.0", "--print", timeout=30)
    assert out.returncode == 2 and "FLOWER_UNAUTHENTICATED_API" in out.stderr


def test_status_server_beyond_loopback_without_STATUS_TOKEN_refuses_to_start() -> None:
    os.environ.pop("STATUS_TOKEN", None)
    out = ultra("status-server", "--host", "0.0.0.0", "--port", str(_free_port()), timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "STATUS_TOKEN" in out.stderr and "Traceback" not in out.stderr


def test_fake_provider_beyond_loopback_refuses_to_start_unless_allowed() -> None:
    out = ultra("fake-provider", "--host", "0.0.0.0", "--port", str(_free_port()), timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--allow-remote" in out.stderr and "Traceback" not in out.stderr


# --- the status server's token --------------------------------------------------------------------------
@pytest.fixture
def token_server(database: str, redis_client: object, tmp_path: Path) -> Iterator[StatusServer]:
    os.environ["STATUS_TOKEN"] = TOKEN
    server = StatusServer(tmp_path).start()  # start() polls /healthz, which needs no token
    yield server
    server.stop()


def test_status_token_is_required_on_every_path_but_healthz(token_server: StatusServer) -> None:
    url = token_server.url
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
    for path in ("/", "/status.json", "/metrics", "/readyz"):
        status, body = http(url + path)
        assert status == 401, (path, body[:200])
        assert http(url + path, {"Authorization": "Bearer wrong-token"})[0] == 401, path
        assert http(url + path + f"?token={TOKEN}")[0] == 401, path  # no token in URLs
        assert http(url + path, bearer)[0] == 200, path
        assert http(url + path, basic)[0] == 200, path  # a browser's login prompt
    assert http(url + "/healthz")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/status.json", timeout=10)
    assert "Bearer" in info.value.headers["WWW-Authenticate"]


# --- secrets masked wherever the status server shows them ------------------------------------------------
@pytest.fixture
def leaky_component(database: str) -> Iterator[str]:
    """A healthy component whose name and reason carry a URL password and the STATUS_TOKEN (as a driver's
    error text might); removed after the test."""
    name = f"replica pg://a:{DB_PASSWORD}@r/{uuid.uuid4().hex[:6]}"  # component names hold 64 chars
    reason = f"answered; postgresql://app:{DB_PASSWORD}@replica/ultra, token {TOKEN} (test)"
    SystemOperationMode().record_component(name, "ok", reason, kind="database", severity="low")
    yield name
    with session_scope() as s:
        s.execute(delete(ComponentStatus).where(ComponentStatus.component == name))


def test_status_page_json_metrics_and_cli_mask_url_passwords_and_secret_settings(
    token_server: StatusServer, leaky_component: str
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, body = http(token_server.url + "/status.json", bearer)
    assert status == 200
    shown = json.loads(body)
    components = [c for c in shown["components"] if c["component"].startswith("replica ")]
    assert components and "app:***@replica" in components[0]["reason"]
    assert components[0]["component"].startswith("replica pg://a:***@r/")
    for path in ("/status.json", "/", "/metrics"):
        status, body = http(token_server.url + path, bearer)
        assert status == 200, path
        text = body.decode()
        assert "pg://a:***@r/" in text, path  # the name: also a metrics label
        assert DB_PASSWORD not in text and TOKEN not in text, path
    cli = ultra("status", "--json")  # the same snapshot, through `ultra status`
    assert DB_PASSWORD not in cli.stdout and TOKEN not in cli.stdout
    assert "app:***@replica" in cli.stdout


def test_ultra_config_masks_every_replica_url_password_and_the_status_token() -> None:
    os.environ["DATABASE_REPLICA_URLS"] = (
        f"postgresql+psycopg2://ro:{DB_PASSWORD}@replica1/ultra,postgresql+psycopg2://ro:{DB_PASSWORD}x@r2/u"
    )
    os.environ["STATUS_TOKEN"] = TOKEN
    os.environ["REDIS_URL"] = f"redis://:{DB_PASSWORD}@127.0.0.1:6399/0"
    out = ultra("config")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["DATABASE_REPLICA_URLS"] == [
        "postgresql+psycopg2://ro:***@replica1/ultra",
        "postgresql+psycopg2://ro:***@r2/u",
    ]
    assert shown["STATUS_TOKEN"] == "***" and shown["REDIS_URL"] == "redis://:***@127.0.0.1:6399/0"
    assert DB_PASSWORD not in out.stdout + out.stderr and TOKEN not in out.stdout + out.stderr
