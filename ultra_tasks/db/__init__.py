"""SQL storage: engine (with retries, a breaker and read replicas), models, migrations."""

from ultra_tasks.db.engine import (
    database_stats,
    get_engine,
    read_session_scope,
    read_transaction,
    run_in_session,
    run_in_transaction,
    session_scope,
    transaction,
)
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import Base, JobRecord

__all__ = [
    "Base",
    "JobRecord",
    "database_stats",
    "get_engine",
    "read_session_scope",
    "read_transaction",
    "run_in_session",
    "run_in_transaction",
    "session_scope",
    "transaction",
    "upgrade_schema",
]
