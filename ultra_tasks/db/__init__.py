"""SQL storage: engine, models, migrations."""

from ultra_tasks.db.engine import get_engine, session_scope
from ultra_tasks.db.migrate import upgrade_schema
from ultra_tasks.db.models import Base, JobRecord

__all__ = ["Base", "JobRecord", "get_engine", "session_scope", "upgrade_schema"]
