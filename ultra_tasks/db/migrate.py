"""Apply the Alembic migrations shipped in the package, once, even when many processes start together."""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from ultra_tasks.config import redact_url
from ultra_tasks.db.engine import get_engine
from ultra_tasks.errors import DependencyUnavailableError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Arbitrary constant key for PostgreSQL's advisory lock serializing migrations across processes.
_PG_LOCK_KEY = 0x756C747261
_done: set[str] = set()
_local_lock = threading.Lock()


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine | None = None) -> None:
    """Bring the database to the newest schema. Cheap when it is already there."""
    engine = engine or get_engine()
    key = str(engine.url)
    if key in _done:
        return
    with _local_lock:
        if key in _done:
            return
        head = head_revision()
        try:
            if current_revision(engine) != head:
                _upgrade_locked(engine)
        except OperationalError as exc:
            raise DependencyUnavailableError("database", f"{redact_url(key)}: {exc.orig}") from exc
        _done.add(key)


def _upgrade_locked(engine: Engine) -> None:
    cfg = _config()
    if engine.dialect.name == "sqlite":
        lock_path = Path(engine.url.database or "ultra.db").with_suffix(".migrate.lock")
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    else:
        with engine.connect() as lock_conn:
            # waiting for another process's migration, and the migration itself, may take longer than the
            # statement timeout that protects ordinary queries
            lock_conn.execute(text("SET statement_timeout = 0"))
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                with engine.begin() as conn:
                    conn.execute(text("SET LOCAL statement_timeout = 0"))
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            finally:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                lock_conn.commit()
    log.info("database schema at revision %s", head_revision())


def forget_upgrades() -> None:
    """Tests: make the next upgrade_schema() look at the database again."""
    _done.clear()
