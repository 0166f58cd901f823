"""client fields: model_info's local / ollama / base model names (the StrangeLoop frontend's
fields), and api_keys' scope + model (short-lived keys a user's browser gets for one model)

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_info") as batch:
        batch.add_column(sa.Column("localmodel_name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("ollama_model_name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("base_model_name", sa.String(length=100), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scope", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch.create_index("ix_api_keys_scope", ["scope"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_scope")
        batch.drop_column("model_id")
        batch.drop_column("scope")
    with op.batch_alter_table("model_info") as batch:
        batch.drop_column("base_model_name")
        batch.drop_column("ollama_model_name")
        batch.drop_column("localmodel_name")
