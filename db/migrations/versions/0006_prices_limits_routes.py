"""quota policy: model and engine prices, rate limits, several connections per model

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("quota_ledger") as batch:
        batch.add_column(sa.Column("prompt_price", sa.Float(), nullable=True))
        batch.add_column(sa.Column("completion_price", sa.Float(), nullable=True))
    with op.batch_alter_table("quota_reservations") as batch:
        batch.add_column(sa.Column("prompt_price", sa.Float(), nullable=True))
        batch.add_column(sa.Column("completion_price", sa.Float(), nullable=True))
    op.create_table(
        "model_prices",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("prompt_price", sa.Float(), nullable=False),
        sa.Column("completion_price", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model_info.model_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id"),
    )
    op.create_table(
        "engine_prices",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("engine", sa.String(length=64), nullable=False),
        sa.Column("price", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "engine"),
    )
    op.create_table(
        "rate_limits",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject"),
    )
    op.create_table(
        "rate_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=80), nullable=False),
        sa.Column("at", db.models.UTCDateTime(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rate_events_bucket_at", "rate_events", ["bucket", "at"])
    op.create_table(
        "model_routes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model_info.model_id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["connection_id"], ["model_ai_online.ai_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "connection_id", name="uq_model_route"),
    )
    op.create_index("ix_model_routes_model_id", "model_routes", ["model_id"])
    op.create_index("ix_model_routes_connection_id", "model_routes", ["connection_id"])
    op.create_table(
        "connection_health",
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("cooldown_until", db.models.UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.String(length=255), nullable=True),
        sa.Column("disabled_at", db.models.UTCDateTime(), nullable=True),
        sa.Column("updated_at", db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["model_ai_online.ai_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("connection_id"),
    )
    op.create_table(
        "connection_calls",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("at", db.models.UTCDateTime(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_connection_calls_conn_at", "connection_calls", ["connection_id", "at"])


def downgrade() -> None:
    op.drop_table("connection_calls")
    op.drop_table("connection_health")
    op.drop_table("model_routes")
    op.drop_table("rate_events")
    op.drop_table("rate_limits")
    op.drop_table("engine_prices")
    op.drop_table("model_prices")
    with op.batch_alter_table("quota_reservations") as batch:
        batch.drop_column("completion_price")
        batch.drop_column("prompt_price")
    with op.batch_alter_table("quota_ledger") as batch:
        batch.drop_column("completion_price")
        batch.drop_column("prompt_price")
