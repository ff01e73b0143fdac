"""One engine per database URL per process, tuned per backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ultra_tasks.config import get_settings, redact_url
from ultra_tasks.errors import DependencyUnavailableError

_engines: dict[str, Engine] = {}
_lock = threading.Lock()

#: SQLite waits this long for another writer before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 30


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
    url = url or settings.effective_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_max_overflow,
            )
            event.listen(engine, "connect", _on_sqlite_connect)
        else:
            engine = create_engine(
                url,
                pool_pre_ping=True,
                pool_size=settings.database_pool_size,
                max_overflow=settings.database_max_overflow,
                pool_timeout=30,
            )
        _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pool (after fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Connection]:
    """A Core transaction (cheaper than an ORM session on hot paths); outages become
    DependencyUnavailableError."""
    engine = engine or get_engine()
    try:
        with engine.begin() as conn:
            yield conn
    except OperationalError as exc:
        raise DependencyUnavailableError("database", f"{redact_url(str(engine.url))}: {exc.orig}") from exc


_sessionmakers: dict[int, sessionmaker[Session]] = {}


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A transaction: commit on success, roll back on error; DB outages become DependencyUnavailableError."""
    engine = engine or get_engine()
    maker = _sessionmakers.get(id(engine))
    if maker is None:
        maker = _sessionmakers.setdefault(id(engine), sessionmaker(engine, expire_on_commit=False))
    session = maker()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise DependencyUnavailableError("database", f"{redact_url(str(engine.url))}: {exc.orig}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
