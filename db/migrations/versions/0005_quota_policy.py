"""quota policy: academy allowances on a schedule

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-02 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_allowances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("academy", sa.String(length=64), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("pic_times", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("carry_cap_tokens", sa.BigInteger(), nullable=True),
        sa.Column("carry_cap_pic_times", sa.BigInteger(), nullable=True),
        sa.Column("terms", sa.Text(), nullable=True),
        sa.Column("starts_on", sa.Date(), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_quota_allowances_academy", "quota_allowances", ["academy"])
    op.create_index("ix_quota_allowances_enabled", "quota_allowances", ["enabled"])
    op.create_table(
        "quota_allowance_grants",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("allowance_id", sa.Integer(), nullable=False),
        sa.Column("period_key", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("tokens_before", sa.BigInteger(), nullable=False),
        sa.Column("pic_times_before", sa.BigInteger(), nullable=False),
        sa.Column("delta_tokens", sa.BigInteger(), nullable=False),
        sa.Column("delta_pic_times", sa.BigInteger(), nullable=False),
        sa.Column("created_at", db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("allowance_id", "period_key", "user_id", name="uq_allowance_grant_period_user"),
    )
    op.create_index("ix_allowance_grants_run_user", "quota_allowance_grants", ["run_id", "user_id"])
    op.create_table(
        "quota_allowance_runs",
        sa.Column("allowance_id", sa.Integer(), nullable=False),
        sa.Column("period_key", sa.String(length=16), nullable=False),
        sa.Column("started_at", db.models.UTCDateTime(), nullable=False),
        sa.Column("completed_at", db.models.UTCDateTime(), nullable=True),
        sa.Column("users", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("pic_times", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("allowance_id", "period_key"),
    )


def downgrade() -> None:
    op.drop_table("quota_allowance_runs")
    op.drop_table("quota_allowance_grants")
    op.drop_table("quota_allowances")
