"""Real-service fixtures: Redis, a SQL database, the fake provider over HTTP and real Celery workers.

The environment is set in ``pytest_configure``, before anything reads ultra-tasks' settings:
- Redis: ``ULTRA_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/13), flushed at start;
- SQL: a fresh database made from ``ULTRA_TEST_DATABASE_URL`` (PostgreSQL, and always on CI), dropped at
  the end; without it, a temporary SQLite file (the embedded default);
- the fake provider: one server for the session, reset after every test that injects faults, chosen
  explicitly (USE_FAKE_PROVIDER=1; worker subprocesses inherit it with the rest of the environment).
On CI (CI=true) a service that cannot be reached fails the run; locally the tests that need it are skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
ON_CI = os.environ.get("CI") == "true"
#: the xdist worker this process is ("gw0", "gw1", ...; "" without xdist): each runs a session of its own,
#: with its own Redis database and key namespace, SQL database, fake provider and Celery workers
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")


def _session_redis_url(url: str, worker: str) -> str:
    """The Redis database of this session: the given one, or two below it per xdist worker after the
    first (db 13 → 13, 11, 9 ...; the RabbitMQ re-run takes 14 or 12)."""
    if not worker:
        return url
    base, _, db = url.rpartition("/")
    return f"{base}/{max(0, int(db or 0) - 2 * int(worker.removeprefix('gw') or 0))}"


TEST_REDIS_URL = _session_redis_url(
    os.environ.get("ULTRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"), XDIST_WORKER
)
TEST_NAMESPACE = os.environ.get("ULTRA_TEST_NAMESPACE", "ultra-test") + (
    f"-{XDIST_WORKER}" if XDIST_WORKER else ""
)
#: set (amqp://...) to run the session on RabbitMQ instead of the Redis broker
TEST_BROKER_URL = os.environ.get("ULTRA_TEST_BROKER_URL", "")
ON_AMQP = TEST_BROKER_URL.startswith("amqp")
_state: dict[str, object] = {}


def _redis_ok() -> bool:
    import redis

    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def _purge_amqp_queues(url: str) -> None:
    """A session on RabbitMQ starts with the project's queues empty (they may not exist yet)."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        for name in ("llm", "ops"):
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except Exception:  # not declared yet: nothing to purge
                pass
            finally:
                channel.close()


def _make_database(tmp: Path) -> tuple[str, Callable[[], None]]:
    """A fresh, empty database for this session and a function that drops it."""
    base = os.environ.get("ULTRA_TEST_DATABASE_URL")
    if not base:
        return f"sqlite:///{tmp / 'ultra-test.db'}", lambda: None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ultra_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        from ultra_tasks.db.engine import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no test: each worker sets up its own session
    tmp = Path(tempfile.mkdtemp(prefix="ultra-test-"))
    _state["tmp"] = tmp
    os.environ.update(
        {
            "REDIS_URL": TEST_REDIS_URL,
            "ULTRA_REDIS_NAMESPACE": TEST_NAMESPACE,
            "ULTRA_VAR_DIR": str(tmp / "var"),
            "LOG_LEVEL": "INFO",
            # chosen explicitly, as `ultra up` does: with no key and no choice a provider is not configured
            "USE_FAKE_PROVIDER": "1",
            # one signing key for the session's producers and every worker it starts, whatever their var dir
            "ULTRA_SECRET_KEY": secrets.token_urlsafe(48),
        }
    )
    for var in (
        "BROKER_URL",
        "RESULT_BACKEND_URL",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "MODEL_MAP",
        "CACHE_REDIS_URL",
    ):
        os.environ.pop(var, None)
    if TEST_BROKER_URL:  # the queue tests run on RabbitMQ too (tests/integration/test_rabbitmq.py)
        os.environ["BROKER_URL"] = TEST_BROKER_URL
        _purge_amqp_queues(TEST_BROKER_URL)
    _state["redis_ok"] = _redis_ok()
    if _state["redis_ok"]:
        import redis

        redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    try:
        url, drop = _make_database(tmp)
        os.environ["DATABASE_URL"] = url
        _state["db_url"] = url
        _state["drop_db"] = drop
        _state["db_ok"] = True
    except Exception as exc:  # reported by the fixtures that need it
        _state["db_ok"] = False
        _state["db_error"] = str(exc)
    from ultra_tasks.providers.fake_server import FakeProviderServer

    fake = FakeProviderServer().start()
    _state["fake"] = fake
    os.environ["FAKE_PROVIDER_URL"] = fake.url


def pytest_unconfigure(config: pytest.Config) -> None:
    fake = _state.pop("fake", None)
    if fake is not None:
        fake.stop()  # type: ignore[attr-defined]
    drop = _state.pop("drop_db", None)
    if callable(drop):
        drop()
    tmp = _state.pop("tmp", None)
    if isinstance(tmp, Path):
        shutil.rmtree(tmp, ignore_errors=True)


#: the files that take longest, started first so that no session ends long after the others
#: (the sessions take files in collection order, one at a time as they finish one)
LONGEST_FIRST = (
    "tests/integration/test_rabbitmq.py",
    "tests/integration/test_health.py",
    "tests/chaos/test_soak.py",
    "tests/chaos/test_chaos.py",
    "tests/integration/test_reaper.py",
    "tests/integration/test_api_batches.py",
    "tests/integration/test_redis_footprint.py",
    "tests/integration/test_api_chat.py",
    "tests/integration/test_admission.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def ultra_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `ultra` command line in a subprocess with this session's environment."""
    return subprocess.run(
        [sys.executable, "-m", "ultra_tasks.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=timeout,
    )


def _need(ok_key: str, what: str) -> None:
    if not _state.get(ok_key):
        message = f"{what} is not reachable ({_state.get('db_error', TEST_REDIS_URL)})"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test may change environment variables; they and the cached settings are restored after, and
    a runtime built under changed variables (another deployments file, say) is dropped with them."""
    from ultra_tasks.config import reset_settings
    from ultra_tasks.providers.deployments import forget_catalogs
    from ultra_tasks.runtime import reset_runtime

    saved = dict(os.environ)
    yield
    changed = os.environ != saved
    os.environ.clear()
    os.environ.update(saved)
    reset_settings()
    if changed:
        reset_runtime()
        forget_catalogs()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[object]:
    _need("redis_ok", "Redis")
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _empty_admission_bound() -> None:
    """Every test starts with no admission slot taken: the jobs earlier tests left waiting (no worker ran
    them, their messages were purged) would otherwise count against QUEUE_MAX_SIZE for the rest of the
    session. The sets are marked synced, so they are not rebuilt from those jobs' rows."""
    if not _state.get("redis_ok"):
        return
    from ultra_tasks import keys

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.delete(*keys.admission_keys())
        client.set(keys.admission_synced(), "1")
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _normal_mode_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves the operation mode worse than NORMAL (or overridden) must not make workers park
    the next tests' jobs: the mode state is wiped after it."""
    yield
    if "database" not in request.fixturenames or not _state.get("db_ok"):
        return
    try:
        from sqlalchemy import delete, select

        from ultra_tasks import keys
        from ultra_tasks.db.engine import get_engine, session_scope
        from ultra_tasks.db.models import ComponentStatus, ModeTransition, OperationModeRecord

        # the session's database, whatever the test pointed DATABASE_URL at
        with session_scope(get_engine(str(_state["db_url"]))) as s:
            record = s.execute(select(OperationModeRecord)).scalars().first()
            if record is None or (record.mode == "NORMAL" and not record.override_mode):
                return
            for model in (ComponentStatus, ModeTransition, OperationModeRecord):
                s.execute(delete(model))
        redis.Redis.from_url(TEST_REDIS_URL).delete(keys.mode_current())
        time.sleep(1.1)  # workers re-read the mode at most a second after it changed (ModeReader)
    except Exception as exc:  # the test may have broken the database on purpose
        print(f"could not reset the operation mode after {request.node.name}: {exc}")


@pytest.fixture(scope="session")
def database() -> str:
    """The session's SQL database URL, migrated to the newest schema."""
    _need("db_ok", "The SQL database")
    from ultra_tasks.db.migrate import upgrade_schema

    upgrade_schema()
    return os.environ["DATABASE_URL"]


@pytest.fixture
def fake_provider() -> Iterator[object]:
    """Control of the session's fake provider; faults and counters are reset after the test, and so are
    the providers' breakers its faults may have opened (a later test would fall back or park)."""
    from ultra_tasks import CircuitBreaker
    from ultra_tasks.providers.fake_server import FakeProviderControl

    control = FakeProviderControl(os.environ["FAKE_PROVIDER_URL"])
    control.reset()
    yield control
    control.reset()
    for name in ("openai", "anthropic"):
        CircuitBreaker(name).reset()


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_worker(
    queues: str = "llm.high,llm.default,llm.low",
    concurrency: int = 8,
    name: str | None = None,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60,
) -> WorkerProcess:
    """Start a real Celery worker subprocess and wait until it answers a ping."""
    from ultra_tasks.celery_app import app

    node = name or f"test-{uuid.uuid4().hex[:6]}@localhost"
    tmp = _state["tmp"]
    assert isinstance(tmp, Path)
    log_path = tmp / f"{node.split('@')[0]}.log"
    from ultra_tasks.config import load_settings
    from workers import roles

    # the llm role's own command line (as `ultra worker llm` runs it), pointed at the queues asked for
    argv = roles()["llm"].argv(
        load_settings(),
        concurrency=concurrency,
        node_name=node,
        extra=["--without-mingle", "--without-gossip"],
    )
    from ultra_tasks.broker import consumed_queues

    argv[argv.index("-Q") + 1] = ",".join(consumed_queues(queues.split(",")))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    worker = WorkerProcess(node, proc, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {node} exited with {proc.returncode}:\n{worker.log()[-3000:]}")
        replies = app.control.ping(destination=[node], timeout=0.5) or []
        if any(node in reply for reply in replies):
            return worker
    worker.stop(signal.SIGKILL)
    raise RuntimeError(f"worker {node} did not become ready in {ready_timeout}s:\n{worker.log()[-3000:]}")


@pytest.fixture
def worker_factory(redis_client: object, database: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start Celery workers on demand; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def factory(**kwargs: object) -> WorkerProcess:
        worker = start_worker(**kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture
def closed_provider_breakers(redis_client: object) -> Iterator[None]:
    """The providers' shared breakers start and end the test closed (tests that trip them on purpose)."""
    from ultra_tasks import CircuitBreaker

    for name in ("openai", "anthropic"):
        CircuitBreaker(name).reset()
    yield
    for name in ("openai", "anthropic"):
        CircuitBreaker(name).reset()


@pytest.fixture
def fresh_latencies(redis_client: object) -> Iterator[None]:
    """The providers' shared latency history starts the test empty, so a call timeout is PROVIDER_TIMEOUT,
    not what the session's earlier fast calls taught (a test whose calls are slow on purpose). Workers
    reread the history within a second (timeouts.REFRESH_S)."""
    from ultra_tasks import keys
    from ultra_tasks.resilience.timeouts import REFRESH_S

    client = redis.Redis.from_url(TEST_REDIS_URL)
    names = list(client.scan_iter(match=keys.latencies("*", "*"), count=500))
    if names:
        client.delete(*names)
    time.sleep(REFRESH_S + 0.2)
    yield


@pytest.fixture(scope="module")
def llm_worker(redis_client: object, database: str) -> Iterator[WorkerProcess]:
    """One LLM worker shared by the tests of a module."""
    worker = start_worker(concurrency=8)
    yield worker
    worker.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- a private Redis that tests may stop and start -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server we can stop and start, so an outage hurts nobody else."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def persistence(self) -> list[str]:
        """redis-server options for what it keeps on disk: nothing, here."""
        return ["--save", "", "--appendonly", "no"]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *self.persistence()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20  # an AOF is replayed before the server answers
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if ON_CI:
            pytest.fail("redis-server binary not installed")
        pytest.skip("redis-server binary not installed")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


# --- a private PostgreSQL that tests may stop and start ---------------------------------------------------
def _postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary (initdb, pg_ctl): the newest under /usr/lib/postgresql, else on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(found[-1]) if found else shutil.which(name)


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` OS user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _postgres_owned_tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    return path


class PostgresServer:
    """A private PostgreSQL cluster on a free loopback port (trust auth), which tests may stop and start
    so an outage hurts nobody else. Never the system cluster on 5432."""

    def __init__(self, template: Path, database: str = "ultra") -> None:
        self.port = _free_port()
        self.database = database
        self.dir = _postgres_owned_tmpdir("ultra-pg-")
        self.data = self.dir / "data"
        # a copy of a cluster initdb'd once per session: cheaper than initdb per test
        subprocess.run([*_as_postgres_user(), "cp", "-a", str(template), str(self.data)], check=True)
        self.running = False

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str, timeout: float = 30, check: bool = True) -> None:
        pg_ctl = _postgres_bin("pg_ctl")
        assert pg_ctl is not None
        subprocess.run(
            [*_as_postgres_user(), pg_ctl, "-D", str(self.data), *args],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )

    def start(self) -> None:
        """Start (or restart, same data and port) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60"
        )
        self._pg_ctl("-l", str(self.dir / "server.log"), "-w", "-t", "30", "-o", options, "start", timeout=40)
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as in a real outage."""
        if self.running:
            self._pg_ctl("-m", "fast", "-w", "-t", "30", "stop", timeout=40)
            self.running = False

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_for(name)

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        try:
            self.stop()
        except (subprocess.SubprocessError, OSError):
            self._pg_ctl("-m", "immediate", "stop", timeout=20, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[Path]:
    """One initdb per session (trust auth, superuser `postgres`), copied by each private_postgres."""
    initdb = _postgres_bin("initdb")
    if initdb is None or _postgres_bin("pg_ctl") is None:
        if ON_CI:
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not installed")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    root = _postgres_owned_tmpdir("ultra-pg-template-")
    template = root / "data"
    options = ["-U", "postgres", "-A", "trust", "--no-sync", "--locale=C", "-E", "UTF8"]
    subprocess.run(
        [*_as_postgres_user(), initdb, "-D", str(template), *options],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    yield template
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres(_postgres_template: Path) -> Iterator[PostgresServer]:
    """A running private PostgreSQL with an empty database ``ultra`` (``.url``); ``.stop()``/``.start()``
    cause and end an outage; always stopped and removed after the test."""
    server = PostgresServer(_postgres_template)
    try:
        server.start()
        server.create_database(server.database)
        yield server
    finally:
        server.destroy()


# --- the broker's queues, whichever broker the session runs on ------------------------------------------
class BrokerQueues:
    """Depth and purge of a logical queue on the session's broker. On RabbitMQ the three LLM levels share
    one queue ("llm"), so the depth of any of them is that queue's depth."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def depth(self, queue: str) -> int:
        from ultra_tasks.jobs.stats import queue_depths

        depths = queue_depths(None if ON_AMQP else self.client)
        if ON_AMQP:
            return depths["ops" if queue == "ops" else "llm"]
        return depths[queue]

    def llm_depth(self) -> int:
        """Jobs waiting in all three LLM queues together."""
        from ultra_tasks.jobs.stats import queue_depths

        depths = queue_depths(None if ON_AMQP else self.client)
        return sum(n for q, n in depths.items() if q != "ops")

    def drop_messages(self, queue: str) -> None:
        """Drop the queue's messages (as a broker that lost them would); the jobs stay recorded."""
        from ultra_tasks.broker import consumed_queues
        from ultra_tasks.celery_app import app

        with app.connection_for_write() as conn:
            for name in consumed_queues([queue]):
                conn.default_channel.queue_purge(name)

    def purge(self, queue: str) -> None:
        """Drop the queue's messages and end its waiting jobs (as expired), so no sweep republishes
        them into a later test."""
        from sqlalchemy import update

        from ultra_tasks.db.engine import transaction
        from ultra_tasks.jobs.records import jobs

        self.drop_messages(queue)
        with transaction() as conn:
            conn.execute(
                update(jobs).where(jobs.c.status == "queued", jobs.c.queue == queue).values(status="expired")
            )


@pytest.fixture
def broker_queues(redis_client: redis.Redis) -> BrokerQueues:
    return BrokerQueues(redis_client)


@pytest.fixture
def dead_broker_url() -> str:
    """A broker URL of the session's kind where nothing listens (an outage)."""
    port = _free_port()
    return f"amqp://guest:guest@127.0.0.1:{port}//" if ON_AMQP else f"redis://127.0.0.1:{port}/0"
