"""jobs: parking (due time and the reason a job waits)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parked_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("status_reason", sa.String(500), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "status_reason")
    op.drop_column("jobs", "parked_until")
