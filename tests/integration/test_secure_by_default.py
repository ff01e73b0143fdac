"""Secure by default (issue 16): every HTTP service the project starts listens on loopback unless told
otherwise, beyond loopback each refuses to start without its guard (FLOWER_BASIC_AUTH of your own,
STATUS_TOKEN, --allow-remote), the status server asks for its token, and secrets never show on the status
page, its JSON, `ultra status`, `ultra config` or metrics labels. Real processes, real sockets (loopback
only), the session's Redis and database."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
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
from api_server import ApiServer
from conftest import _free_port
from conftest import ultra_cli as ultra
from sqlalchemy import delete, select
from status_server import StatusServer

from ultra_tasks import SystemOperationMode
from ultra_tasks.api.tenants import SHOWN_CHARS, create_key, tenant_for_key
from ultra_tasks.config import reset_settings
from ultra_tasks.db.engine import session_scope
from ultra_tasks.db.models import ApiKey, ComponentStatus
from ultra_tasks.redaction import install_log_redaction, known_secrets

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


@pytest.mark.usefixtures("database", "redis_client")
def test_the_http_api_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    api = ApiServer(tmp_path).start()  # `ultra api --port N`, no --host
    try:
        assert listening_addresses(api.port) == {"127.0.0.1"}
    finally:
        api.stop()


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


# --- the HTTP API's keys and the deployments file's keys ------------------------------------------------
def test_an_api_key_is_kept_as_its_sha256_only_and_the_stored_digest_opens_nothing(database: str) -> None:
    # Given a key made for a tenant
    info, key = create_key(f"t16-digest-{uuid.uuid4().hex[:8]}")
    # When someone reads its row of the key table (a leaked backup, a read replica)
    with session_scope() as s:
        row = s.execute(select(ApiKey.__table__).where(ApiKey.id == info.id)).one()
    stored = " ".join(str(value) for value in row)
    # Then the key is not there, only its SHA-256 and the first characters a listing shows
    assert key not in stored and key[SHOWN_CHARS:] not in stored
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and row.prefix == key[:SHOWN_CHARS]
    # and what is stored authenticates nobody, while the key itself does
    assert tenant_for_key(row.key_hash) is None and tenant_for_key(row.prefix) is None
    found = tenant_for_key(key)
    assert found is not None and found.name == info.tenant


@pytest.mark.usefixtures("database", "redis_client")
def test_deployment_api_keys_and_url_passwords_from_the_providers_file_never_show_in_cli_or_logs(
    tmp_path: Path,
) -> None:
    env_key = "sk-t16-file-env-" + uuid.uuid4().hex
    literal_key = "sk-t16-file-literal-" + uuid.uuid4().hex
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed: its check fails
    path = tmp_path / "providers.yaml"
    path.write_text(
        "deployments:\n"
        "  - {name: t16-env, kind: openai_compatible, models: [gpt-4o-mini], api_key: env:T16_FILE_KEY,"
        f" base_url: 'http://proxy:{DB_PASSWORD}@127.0.0.1:{closed}/v1'}}\n"
        "  - {name: t16-literal, kind: openai_compatible, models: [gpt-4o], api_key: " + literal_key + ","
        f" base_url: 'http://127.0.0.1:{closed}/v1'}}\n"
    )
    os.environ["PROVIDERS_FILE"] = str(path)
    os.environ["T16_FILE_KEY"] = env_key
    reset_settings()
    secrets_shown = (env_key, literal_key, DB_PASSWORD)
    for argv in (("config",), ("providers", "list", "--json"), ("providers", "check"), ("status", "--json")):
        out = ultra(*argv)
        assert out.returncode in (0, 1), (argv, out.stderr[-2000:])
        for secret in secrets_shown:
            assert secret not in out.stdout + out.stderr, (argv, secret)
    # log lines of any process that installed the redaction (workers, beat, the API and status servers)
    assert {env_key, literal_key} <= set(known_secrets())
    stream = io.StringIO()
    logger = logging.getLogger(f"t16-deployment-keys-{uuid.uuid4().hex}")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    install_log_redaction(logger)
    logger.error("401 from t16-env with key %s; t16-literal refused %s", env_key, literal_key)
    written = stream.getvalue()
    assert env_key not in written and literal_key not in written and written.count("***") == 2


@pytest.mark.usefixtures("database", "redis_client")
def test_the_http_apis_log_lines_mask_secret_values_also_in_its_access_log(tmp_path: Path) -> None:
    secret = "t16-status-token-" + uuid.uuid4().hex  # any secret setting's value
    api = ApiServer(tmp_path, env={"STATUS_TOKEN": secret}).start()
    try:
        # a request line that carries a secret's value (a client that pasted one into a URL)
        assert http(api.url + f"/v1/files/{secret}")[0] == 401
        assert http(api.url + f"/v1/nothing/{secret}")[0] == 404
    finally:
        api.stop()
    log = api.log()
    assert secret not in log, log
    assert "/v1/files/***" in log and "/v1/nothing/***" in log, log
