"""usage roll-up: usage_daily, usage_rollup_days, usage_top_users

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 13:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import db.models

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('usage_rollup_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('rolled_at', db.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )
    op.create_table('usage_daily',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('academy', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('latency_ms_sum', sa.BigInteger(), nullable=False),
    sa.Column('latency_count', sa.BigInteger(), nullable=False),
    sa.Column('ttft_ms_sum', sa.BigInteger(), nullable=False),
    sa.Column('ttft_count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'academy', 'model', 'kind', 'status')
    )
    op.create_table('usage_top_users',
    sa.Column('from_day', sa.Date(), nullable=False),
    sa.Column('to_day', sa.Date(), nullable=False),
    sa.Column('ranking', sa.Text().with_variant(mysql.MEDIUMTEXT(), 'mysql', 'mariadb'), nullable=False),
    sa.Column('computed_at', db.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('from_day', 'to_day')
    )


def downgrade() -> None:
    op.drop_table('usage_top_users')
    op.drop_table('usage_daily')
    op.drop_table('usage_rollup_days')
