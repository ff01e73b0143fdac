"""One engine per database URL per process, tuned per backend, and the ways to use it that survive a
misbehaving database.

- Every PostgreSQL connection has a connect timeout (``DATABASE_CONNECT_TIMEOUT``), TCP keepalives and a
  statement timeout (``DATABASE_STATEMENT_TIMEOUT_MS``), and the pool pings a connection that sat idle
  before lending it, so a database that is down or hung costs a caller bounded time, never a hang.
  (SQLite has no server to lose: neither timeout applies; it waits ``SQLITE_BUSY_TIMEOUT_S`` for a
  writer.)
- Transient errors (refused, dropped connection, server restarting) are retried with tenacity; see
  ``transaction`` versus ``run_in_transaction`` for what can safely be retried.
- Connecting goes through this process's breaker on that URL (db/resilience.py): once the database is
  known unreachable, calls fail fast with ``DependencyUnavailableError("database", ...)``.
- ``read_transaction`` / ``read_session_scope`` read from a replica (``DATABASE_REPLICA_URLS``, round
  robin), falling back to the primary when none answers. A replica lags: use them only for reads whose
  answer may be a moment old and that decide no write.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from ultra_tasks.config import get_settings, redact_url
from ultra_tasks.db.resilience import (
    DatabaseGuard,
    first_line,
    is_outage,
    is_transient,
    map_error,
    retrying,
)
from ultra_tasks.errors import DatabasePoolExhaustedError, DatabaseTimeoutError, DependencyUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

_engines: dict[str, Engine] = {}
_guards: dict[str, DatabaseGuard] = {}
#: an engine URL's key in ``_guards`` (rendering a URL costs more than the rest of lending a connection)
_guard_keys: dict[Any, str] = {}
_sessionmakers: dict[int, sessionmaker[Session]] = {}
_lock = threading.Lock()
#: [settings object, its effective_database_url]
_default_url: list[Any] = [None, ""]

#: SQLite waits this long for another writer before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 30
#: TCP keepalives: a connection whose server vanished mid-query is found dead in about a minute
_PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
#: marks a read-only connection on PostgreSQL (BEGIN READ ONLY): a read path that writes fails on the
#: primary exactly as it would on a replica, instead of only when replicas are configured
_READ_ONLY = {"postgresql_readonly": True}


#: a pooled PostgreSQL connection idle this long is pinged before it is lent, so a restart or failover
#: while it sat in the pool is found then. One in steady use is not: a ping is a round trip per
#: transaction, and a connection that dies in use fails its transaction whether pinged or not (SQLAlchemy
#: then replaces every connection the pool held).
PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return  # just connected, or in steady use
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            # the driver opened a transaction for the ping; the connection is lent without one (a
            # read-only session is set on it next, which the driver refuses inside a transaction)
            dbapi_conn.rollback()
        except Exception as exc:
            # the pool discards this connection and lends a fresh one (connecting again, which fails
            # through the guard if the database is gone)
            raise DisconnectionError(f"a pooled connection did not answer: {first_line(exc)}") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable across process crashes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cur.close()


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: DATABASE_URL or the embedded SQLite file)."""
    settings = get_settings()
    if url is None:
        # resolving the default URL touches the file system (./var resolved): once per settings object,
        # since this runs twice per job
        if _default_url[0] is not settings:
            _default_url[:] = [settings, settings.effective_database_url]
        url = str(_default_url[1])
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_max_overflow,
                pool_timeout=settings.database_pool_timeout,
            )
            event.listen(engine, "connect", _on_sqlite_connect)
        else:
            connect_args: dict[str, Any] = {}
            if parsed.get_backend_name() == "postgresql":
                connect_args = {"connect_timeout": settings.database_connect_timeout, **_PG_KEEPALIVES}
                if settings.database_statement_timeout_ms:
                    timeout = f"-c statement_timeout={settings.database_statement_timeout_ms}"
                    given = parsed.query.get("options")
                    connect_args["options"] = f"{given} {timeout}" if isinstance(given, str) else timeout
            # The primary carries every job's writes: its connections are pinged only after sitting idle.
            # A replica serves reads that fall back to the primary only when connecting fails, so its
            # connections are pinged every time they are lent.
            primary = url == settings.effective_database_url
            engine = create_engine(
                url,
                pool_pre_ping=not primary,
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_max_overflow,
                pool_timeout=settings.database_pool_timeout,
                connect_args=connect_args,
            )
            if primary:
                _ping_after_idle(engine)
        _engines[url] = engine
        return engine


def guard_for(engine: Engine) -> DatabaseGuard:
    """This process's breaker and counters for ``engine``'s database."""
    key = _guard_keys.get(engine.url)
    if key is None:
        key = _guard_keys.setdefault(engine.url, engine.url.render_as_string(hide_password=False))
    guard = _guards.get(key)
    if guard is None:
        settings = get_settings()
        with _lock:
            guard = _guards.setdefault(
                key,
                DatabaseGuard(
                    key,
                    failure_threshold=settings.database_breaker_failure_threshold,
                    reset_timeout=settings.database_breaker_reset_timeout,
                ),
            )
    return guard


def dispose_engines() -> None:
    """Close every pool and forget breaker and replica state (after fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _guards.clear()
        _guard_keys.clear()
        _sessionmakers.clear()
    _replicas.reset()


# --- connecting ------------------------------------------------------------------------------------------
def _guarded(engine: Engine, opener: Callable[[], T]) -> T:
    """One connection attempt through the breaker: refused at once while it is open."""
    guard = guard_for(engine)
    decision = guard.admit()
    try:
        opened = opener()
    except DBAPIError as exc:
        guard.record(decision, failure=is_outage(exc), reason=first_line(exc))
        raise
    except PoolTimeoutError as exc:
        # A pool whose connections all stayed busy says this process asks too much at once, not that the
        # database is down: the breaker does not count it. Mapped here, the one place connections are
        # opened, so every caller gets our error (a job retries later) instead of SQLAlchemy's.
        guard.record(decision, failure=False)
        settings = get_settings()
        raise DatabasePoolExhaustedError(
            f"{redact_url(engine.url.render_as_string(hide_password=False))}: no pooled connection came "
            f"free in {settings.database_pool_timeout:g} s; all {settings.database_pool_size} + "
            f"{settings.database_max_overflow} were busy (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW, "
            "DATABASE_POOL_TIMEOUT)"
        ) from exc
    except BaseException:
        guard.record(decision, failure=False)
        raise
    guard.record(decision, failure=False)
    return opened


def _open(engine: Engine, opener: Callable[[], T], *, retry: bool) -> T:
    # The first attempt goes without retry machinery: a tenacity Retrying built and driven for every
    # transaction is a measurable share of a busy worker's CPU (two transactions per job;
    # docs/benchmarks.md), and connecting almost always works. Only a transient failure pays for the
    # retries, counting itself as their first attempt.
    try:
        return _guarded(engine, opener)
    except DBAPIError as exc:
        if not (retry and is_transient(exc)) or get_settings().database_retry_attempts <= 1:
            raise
        failed: DBAPIError = exc
    again = retrying(get_settings(), guard_for(engine), whole_transaction=False, first_failure=failed)
    return again(_guarded, engine, opener)


def _session_opener(engine: Engine, read_only: bool = False) -> Callable[[], Session]:
    maker = _sessionmakers.get(id(engine))
    if maker is None:
        maker = _sessionmakers.setdefault(id(engine), sessionmaker(engine, expire_on_commit=False))

    def open_session() -> Session:
        session = maker()
        try:
            session.connection(execution_options=_READ_ONLY if read_only else None)
        except BaseException:
            session.close()
            raise
        return session

    return open_session


@contextmanager
def _database_errors(engine: Engine) -> Iterator[None]:
    """Outages (and statement timeouts) leave as DependencyUnavailableError naming the database."""
    try:
        yield
    except DBAPIError as exc:
        if not is_outage(exc):
            raise
        url = engine.url.render_as_string(hide_password=False)
        raise map_error(exc, url, get_settings().database_statement_timeout_ms) from exc


@contextmanager
def _core(conn: Connection) -> Iterator[Connection]:
    with conn, conn.begin():
        yield conn


@contextmanager
def _orm(session: Session) -> Iterator[Session]:
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- the primary -----------------------------------------------------------------------------------------
# Why two shapes. A ``with transaction():`` block cannot be run again by the code that opened it, so
# transaction() and session_scope() retry only the step that precedes the caller's work: getting a live
# connection (connect, or a pooled one that passes the pre-ping). A connection lost mid-block fails the
# block with DependencyUnavailableError and nothing of it is committed. run_in_transaction(fn) and
# run_in_session(fn) own the whole body, so they re-run it from the start on a fresh connection after a
# dropped connection, a serialization failure or a deadlock. ``fn`` must therefore be safe to run twice:
# its database work is rolled back, but side effects outside the database are not, and a connection lost
# during COMMIT itself leaves unknown whether the first run was committed (make its writes idempotent).


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Connection]:
    """A Core transaction (cheaper than an ORM session on hot paths): commit on success, roll back on
    error. Connecting is retried and guarded by the breaker; outages become DependencyUnavailableError."""
    engine = engine or get_engine()
    with _database_errors(engine), _core(_open(engine, engine.connect, retry=True)) as conn:
        yield conn


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """An ORM transaction: commit on success, roll back on error; DB outages become
    DependencyUnavailableError."""
    engine = engine or get_engine()
    with _database_errors(engine), _orm(_open(engine, _session_opener(engine), retry=True)) as session:
        yield session


def run_in_transaction(fn: Callable[[Connection], T], engine: Engine | None = None) -> T:
    """``fn(conn)`` in one Core transaction, re-run from the start after a transient failure."""
    engine = engine or get_engine()

    def once() -> T:
        with _core(_guarded(engine, engine.connect)) as conn:
            return fn(conn)

    with _database_errors(engine):
        return retrying(get_settings(), guard_for(engine), whole_transaction=True)(once)


def run_in_session(fn: Callable[[Session], T], engine: Engine | None = None) -> T:
    """``fn(session)`` in one ORM transaction, re-run from the start after a transient failure."""
    engine = engine or get_engine()

    def once() -> T:
        with _orm(_guarded(engine, _session_opener(engine))) as session:
            return fn(session)

    with _database_errors(engine):
        return retrying(get_settings(), guard_for(engine), whole_transaction=True)(once)


# --- read replicas ---------------------------------------------------------------------------------------
class _Replicas:
    """Round robin over DATABASE_REPLICA_URLS, skipping a replica for DATABASE_REPLICA_DOWN_FOR seconds
    after it failed."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._turn = itertools.count()
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def candidates(self) -> list[str]:
        urls = get_settings().database_replica_urls
        if not urls:
            return []
        start = next(self._turn) % len(urls)
        now = self._now()
        with self._lock:
            ordered = urls[start:] + urls[:start]
            return [u for u in ordered if self._down_until.get(u, 0.0) <= now]

    def mark_down(self, url: str, exc: BaseException) -> None:
        down_for = get_settings().database_replica_down_for
        with self._lock:
            already = self._down_until.get(url, 0.0) > self._now()
            self._down_until[url] = self._now() + down_for
        if not already:
            log.warning("read replica %s skipped for %.0fs: %s", redact_url(url), down_for, first_line(exc))

    def down(self) -> list[str]:
        now = self._now()
        with self._lock:
            return [redact_url(u) for u, until in self._down_until.items() if until > now]

    def reset(self) -> None:
        with self._lock:
            self._down_until.clear()


_replicas = _Replicas()


def has_replicas() -> bool:
    return bool(get_settings().database_replica_urls)


def _read_open(engine: Engine | None, opener: Callable[[Engine], Callable[[], T]]) -> tuple[Engine, bool, T]:
    """A read-only connection (or session) from the first replica that answers, else from the primary
    (or from ``engine`` when given); also says whether it came from a replica."""
    if engine is None:
        for url in _replicas.candidates():
            replica = get_engine(url)
            try:
                return replica, True, _guarded(replica, opener(replica))
            except (DBAPIError, DependencyUnavailableError) as exc:
                _replicas.mark_down(url, exc)
        engine = get_engine()
        if has_replicas():
            guard_for(engine)._count("replica_fallbacks")
    with _database_errors(engine):
        return engine, False, _open(engine, opener(engine), retry=True)


def _replica_failed(engine: Engine, exc: DependencyUnavailableError) -> None:
    # a statement timeout is the query's fault, not the replica's: only an outage sends reads elsewhere
    if not isinstance(exc, DatabaseTimeoutError):
        _replicas.mark_down(engine.url.render_as_string(hide_password=False), exc)


@contextmanager
def read_transaction(engine: Engine | None = None) -> Iterator[Connection]:
    """A read-only Core transaction on a replica (the primary when no replica answers, or ``engine``)."""
    used, replica, conn = _read_open(engine, lambda e: lambda: e.connect().execution_options(**_READ_ONLY))
    try:
        with _database_errors(used), _core(conn) as c:
            yield c
    except DependencyUnavailableError as exc:
        if replica:
            _replica_failed(used, exc)
        raise


@contextmanager
def read_session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A read-only ORM session on a replica (the primary when no replica answers, or ``engine``)."""
    used, replica, session = _read_open(engine, lambda e: _session_opener(e, read_only=True))
    try:
        with _database_errors(used), _orm(session) as s:
            yield s
    except DependencyUnavailableError as exc:
        if replica:
            _replica_failed(used, exc)
        raise


def database_stats() -> dict[str, Any]:
    """JSON-safe breaker state and counters of every database this process used, and replicas skipped."""
    with _lock:
        guards = list(_guards.values())
    return {"databases": [g.stats() for g in guards], "replicas_down": _replicas.down()}
