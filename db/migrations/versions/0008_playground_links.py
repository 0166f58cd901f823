"""playground_links: single-use playground sign-in links

Revision ID: 0008
Revises: 0002
Create Date: 2026-12-02 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.models

revision: str = '0008'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('playground_links',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('used_at', db.models.UTCDateTime(), nullable=False),
    sa.Column('expires_at', db.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    op.create_index(op.f('ix_playground_links_expires_at'), 'playground_links', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_table('playground_links')
