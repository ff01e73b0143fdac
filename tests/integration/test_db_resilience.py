"""The database layer against a real, private PostgreSQL that the tests stop and start: statement timeout,
fast failure and a breaker while it is down, recovery, retries of dropped connections, replica routing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg2
import pytest
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from ultra_tasks.config import reset_settings
from ultra_tasks.db import engine as db
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import JobRecord, ModeTransition
from ultra_tasks.errors import DatabasePoolExhaustedError, DatabaseTimeoutError, DependencyUnavailableError
from ultra_tasks.jobs import records

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture(autouse=True)
def _fresh_engines() -> Iterator[None]:
    """Engines, breakers and replica marks are per process: start and end each test without them."""
    db.dispose_engines()
    yield
    db.dispose_engines()


def _configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    db.dispose_engines()


def _count_connects(engine: Engine) -> list[int]:
    """Real connection attempts to the server (SQLAlchemy fires do_connect before each DBAPI connect)."""
    attempts = [0]

    def count(*_: Any) -> None:
        attempts[0] += 1

    event.listen(engine, "do_connect", count)
    return attempts


def _terminate(server: Any, pid: int) -> None:
    """Kill one backend from a second connection, as a failover or an admin would."""
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()


def _backend_pid(conn: Any) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_statement_timeout_cancels_a_long_query_without_tripping_the_breaker(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url, DATABASE_STATEMENT_TIMEOUT_MS="200")
    started = time.monotonic()
    with pytest.raises(DatabaseTimeoutError) as caught, db.transaction() as conn:
        conn.execute(text("SELECT pg_sleep(20)"))
    assert time.monotonic() - started < 15  # cancelled, not waited out
    assert "DATABASE_STATEMENT_TIMEOUT_MS" in str(caught.value)
    assert isinstance(caught.value, DependencyUnavailableError) and isinstance(caught.value, TimeoutError)
    with db.transaction() as conn:  # the database is fine: the next statement runs
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    stats = db.database_stats()["databases"][0]
    assert stats["connect_failures"] == 0 and stats["state"] == "closed"


def test_statement_timeout_zero_means_no_limit(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url, DATABASE_STATEMENT_TIMEOUT_MS="0")
    with db.transaction() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
        conn.execute(text("SELECT pg_sleep(0.3)"))


def test_database_down_fails_fast_naming_the_database_with_its_password_masked(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trust auth accepts any password: the URL carries one only to prove it never reaches a message
    url = private_postgres.url.replace("postgres@", "postgres:s3cret-pw@")
    _configure(monkeypatch, DATABASE_URL=url)
    with db.transaction() as conn:
        conn.execute(text("SELECT 1"))
    private_postgres.stop()
    started = time.monotonic()
    for scope in (db.transaction, db.session_scope, db.read_transaction, db.read_session_scope):
        with pytest.raises(DependencyUnavailableError) as caught, scope() as handle:
            handle.execute(text("SELECT 1"))
        message = str(caught.value)
        assert caught.value.dependency == "database"
        assert f"127.0.0.1:{private_postgres.port}/ultra" in message
        assert "***" in message and "s3cret-pw" not in message
    assert time.monotonic() - started < 30  # refused connects and short retries, no hang


def test_breaker_opens_after_threshold_failures_then_fails_without_connecting(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(
        monkeypatch,
        DATABASE_URL=private_postgres.url,
        DATABASE_BREAKER_FAILURE_THRESHOLD="3",
        DATABASE_BREAKER_RESET_TIMEOUT="600",
    )
    connects = _count_connects(db.get_engine())
    private_postgres.stop()
    errors = []
    for _ in range(30):
        with pytest.raises(DependencyUnavailableError) as caught, db.transaction() as conn:
            conn.execute(text("SELECT 1"))
        errors.append(str(caught.value))
    # Given 30 calls against a stopped database, only the first few tried to connect
    assert connects[0] == 3
    assert sum("circuit open after 3 failed connection attempts" in e for e in errors) >= 28
    assert "Connection refused" in errors[-1]  # the open breaker still says what the last failure was
    stats = db.database_stats()["databases"][0]
    assert stats["state"] == "open"
    assert stats["transitions"] == {"closed->open": 1}
    assert stats["connect_failures"] == 3 and stats["rejected"] >= 28


def test_breaker_closes_again_once_the_database_is_back(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(
        monkeypatch,
        DATABASE_URL=private_postgres.url,
        DATABASE_BREAKER_FAILURE_THRESHOLD="2",
        DATABASE_BREAKER_RESET_TIMEOUT="0.5",
    )
    private_postgres.stop()
    for _ in range(3):
        with pytest.raises(DependencyUnavailableError), db.transaction() as conn:
            conn.execute(text("SELECT 1"))
    assert db.database_stats()["databases"][0]["state"] == "open"
    private_postgres.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            with db.transaction() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
            break
        except DependencyUnavailableError:
            assert time.monotonic() < deadline, "the database came back but calls still fail"
            time.sleep(0.2)
    stats = db.database_stats()["databases"][0]
    assert stats["state"] == "closed"
    assert stats["transitions"]["closed->open"] >= 1
    assert stats["transitions"]["half-open->closed"] == 1


def test_a_connect_that_fails_once_is_retried_counted_and_the_transaction_goes_through(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first connect of a transaction runs without retry machinery (a fast path); its transient failure
    # must still be retried as the first of DATABASE_RETRY_ATTEMPTS and counted.
    _configure(monkeypatch, DATABASE_URL=private_postgres.url, DATABASE_RETRY_ATTEMPTS="3")
    connects = _count_connects(db.get_engine())
    refused = [1]

    def refuse_once(*_: Any) -> None:
        if refused[0]:
            refused[0] = 0
            raise psycopg2.OperationalError("could not connect to server: Connection refused (injected)")

    event.listen(db.get_engine(), "do_connect", refuse_once)
    with db.transaction() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert connects[0] == 2
    stats = db.database_stats()["databases"][0]
    assert stats["retries"] == 1 and stats["state"] == "closed"


def test_a_connect_that_keeps_failing_stops_after_the_configured_attempts(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(
        monkeypatch,
        DATABASE_URL=private_postgres.url,
        DATABASE_RETRY_ATTEMPTS="2",
        DATABASE_BREAKER_FAILURE_THRESHOLD="50",
    )
    connects = _count_connects(db.get_engine())
    private_postgres.stop()
    with pytest.raises(DependencyUnavailableError), db.transaction() as conn:
        conn.execute(text("SELECT 1"))
    assert connects[0] == 2
    assert db.database_stats()["databases"][0]["retries"] == 1


def test_an_exhausted_pool_fails_with_our_error_naming_its_settings_and_trips_no_breaker(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(
        monkeypatch,
        DATABASE_URL=private_postgres.url,
        DATABASE_POOL_SIZE="1",
        DATABASE_MAX_OVERFLOW="0",
        DATABASE_POOL_TIMEOUT="0.5",
        DATABASE_BREAKER_FAILURE_THRESHOLD="1",
    )
    with db.transaction() as held:  # the pool's only connection stays busy
        held.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(DatabasePoolExhaustedError) as caught, db.transaction() as conn:
            conn.execute(text("SELECT 1"))
        assert 0.4 < time.monotonic() - started < 10
    message = str(caught.value)
    assert "DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW" in message and "0.5 s" in message
    assert isinstance(caught.value, DependencyUnavailableError)  # jobs retry it as they do an outage
    # a busy pool is not a database outage: the breaker (threshold 1) stayed closed, and the next call works
    assert db.database_stats()["databases"][0]["state"] == "closed"
    with db.transaction() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


def test_a_connection_killed_while_idle_in_the_pool_is_replaced_transparently(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url, DATABASE_POOL_SIZE="1")
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.05)
    with db.transaction() as conn:
        first = _backend_pid(conn)
    _terminate(private_postgres, first)  # the pooled connection is now dead
    time.sleep(0.1)  # ... and has been idle long enough to be pinged before it is lent
    with db.transaction() as conn:
        second = _backend_pid(conn)
    assert second != first


def test_a_connection_in_steady_use_is_not_pinged_and_one_lost_in_use_is_replaced_after_one_failure(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ping per transaction is a round trip per transaction; a connection reused at once is lent as is.
    # Had it died meanwhile, that one transaction fails as an outage (nothing committed, the caller's
    # outage path runs) and SQLAlchemy replaces the pool's connections, so the next one goes through.
    _configure(monkeypatch, DATABASE_URL=private_postgres.url, DATABASE_POOL_SIZE="1")
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 60.0)
    with db.transaction() as conn:
        first = _backend_pid(conn)
    _terminate(private_postgres, first)
    with pytest.raises(DependencyUnavailableError), db.transaction() as conn:
        conn.execute(text("SELECT 1"))
    with db.transaction() as conn:
        assert _backend_pid(conn) != first


def test_run_in_transaction_reruns_the_whole_body_after_a_dropped_connection(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url)
    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE notes (id int PRIMARY KEY, body text)"))
    runs: list[int] = []

    def body(conn: Any) -> int:
        runs.append(_backend_pid(conn))
        conn.execute(text("INSERT INTO notes VALUES (1, 'written by run ' || :n)"), {"n": len(runs)})
        if len(runs) == 1:
            _terminate(private_postgres, runs[0])  # the connection dies mid-transaction
        return int(conn.execute(text("SELECT count(*) FROM notes")).scalar_one())

    assert db.run_in_transaction(body) == 1
    assert len(runs) == 2 and runs[0] != runs[1]
    with db.transaction() as conn:
        assert conn.execute(text("SELECT body FROM notes")).scalars().all() == ["written by run 2"]
    assert db.database_stats()["databases"][0]["retries"] == 1


def test_a_with_block_that_loses_its_connection_fails_and_commits_nothing(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url)
    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE notes (id int PRIMARY KEY)"))
    entered = 0
    with pytest.raises(DependencyUnavailableError), db.transaction() as conn:
        entered += 1  # a with-block cannot be re-run: it fails once, loudly
        conn.execute(text("INSERT INTO notes VALUES (1)"))
        _terminate(private_postgres, _backend_pid(conn))
        conn.execute(text("INSERT INTO notes VALUES (2)"))
    assert entered == 1
    with db.transaction() as conn:
        assert conn.execute(text("SELECT count(*) FROM notes")).scalar_one() == 0


def test_errors_that_are_not_transient_are_never_retried(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url)
    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE notes (id int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO notes VALUES (1)"))
    calls = 0

    def duplicate(conn: Any) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO notes VALUES (1)"))

    with pytest.raises(IntegrityError):
        db.run_in_transaction(duplicate)
    assert calls == 1
    assert db.database_stats()["databases"][0]["retries"] == 0


def test_read_transactions_refuse_writes_even_on_the_primary(
    private_postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, DATABASE_URL=private_postgres.url)
    with db.transaction() as conn:
        conn.execute(text("CREATE TABLE notes (id int)"))
    with pytest.raises(DBAPIError, match="read-only transaction"), db.read_transaction() as conn:
        conn.execute(text("INSERT INTO notes VALUES (1)"))
    with db.transaction() as conn:  # and the pooled connection is writable again afterwards
        conn.execute(text("INSERT INTO notes VALUES (1)"))


# --- replicas: the session database is the primary, the private server plays a replica with other rows ---
def _job_row(job_id: str, model: str, idempotency_key: str | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": job_id,
        "status": "queued",
        "priority": "default",
        "queue": "llm.default",
        "model": model,
        "request": {"prompt": "hi"},
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "idempotency_key": idempotency_key,
    }


@pytest.fixture
def replica(private_postgres: Any, database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """DATABASE_REPLICA_URLS points at the private server, migrated like the primary but holding its own
    rows: a read that answers with the replica's row came from the replica."""
    _configure(monkeypatch, DATABASE_REPLICA_URLS=private_postgres.url, DATABASE_REPLICA_DOWN_FOR="600")
    upgrade_schema(db.get_engine(private_postgres.url))
    yield private_postgres


def test_reads_go_to_a_replica_and_fall_back_to_the_primary_when_it_stops(replica: Any) -> None:
    job_id = str(uuid.uuid4())
    with db.transaction() as conn:
        conn.execute(insert(JobRecord.__table__).values(**_job_row(job_id, "primary-model")))
    with db.transaction(db.get_engine(replica.url)) as conn:
        conn.execute(insert(JobRecord.__table__).values(**_job_row(job_id, "replica-model")))

    assert records.get_job(job_id).model == "replica-model"
    assert any(r.model == "replica-model" for r in records.list_jobs(limit=5))

    replica.stop()
    assert records.get_job(job_id).model == "primary-model"
    assert db.database_stats()["replicas_down"] == [replica.url]
    connects = _count_connects(db.get_engine(replica.url))
    for _ in range(5):  # a replica marked down is not tried again for a while
        assert records.get_job(job_id).model == "primary-model"
    assert connects[0] == 0


def test_a_job_not_yet_on_a_lagging_replica_is_read_from_the_primary(replica: Any) -> None:
    job_id = str(uuid.uuid4())
    with db.transaction() as conn:  # recorded on the primary; the replica has not caught up
        conn.execute(insert(JobRecord.__table__).values(**_job_row(job_id, "primary-model")))
    assert records.get_job(job_id).model == "primary-model"


def test_idempotency_lookups_stay_on_the_primary(replica: Any) -> None:
    key = f"key-{uuid.uuid4()}"
    with db.transaction(db.get_engine(replica.url)) as conn:
        conn.execute(insert(JobRecord.__table__).values(**_job_row(str(uuid.uuid4()), "m", key)))
    assert records.find_by_idempotency_key(key) is None  # the replica's row is not the truth


def test_mode_history_is_read_from_a_replica(replica: Any, redis_client: Any) -> None:
    from ultra_tasks import SystemOperationMode

    at = datetime(2001, 1, 1, tzinfo=UTC)
    with db.transaction(db.get_engine(replica.url)) as conn:
        conn.execute(
            insert(ModeTransition.__table__).values(
                from_mode="NORMAL", to_mode="EMERGENCY", reasons=[], at=at
            )
        )
    mode = SystemOperationMode()
    try:
        assert mode.history(limit=1)[0]["at"] == at.isoformat()
    finally:
        mode.close()
