"""billing: the ledger of provider calls (one row per job and attempt), budgets' period and hard cap

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("budget_period", sa.String(8), nullable=False, server_default="month"))
        batch.add_column(sa.Column("budget_hard_cap_usd", sa.Float(), nullable=True))
    op.create_table(
        "ledger",
        # the exactly-once guarantee: a call's row is written once however often its write is tried
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("attempt_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(36), nullable=True),
        sa.Column("deployment", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_nusd", sa.BigInteger(), nullable=True),
        sa.Column("worst_nusd", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ledger_tenant_created", "ledger", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_tenant_created", table_name="ledger")
    op.drop_table("ledger")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("budget_hard_cap_usd")
        batch.drop_column("budget_period")
