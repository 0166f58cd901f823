"""quota policy: the connection that served a chat, on its usage and ledger rows (failover)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("usage_records", "quota_ledger"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("connection_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in ("quota_ledger", "usage_records"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("connection_id")
