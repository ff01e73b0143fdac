"""Alembic environment: runs on the connection handed over by ultra_tasks.db.migrate."""

from __future__ import annotations

from alembic import context

from ultra_tasks.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand with -x url=...
    from sqlalchemy import create_engine

    from ultra_tasks.config import get_settings

    url = context.get_x_argument(as_dictionary=True).get("url") or get_settings().effective_database_url
    connection = create_engine(url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
