"""identity stamps, ids never reused, login admission counters

- `users.identity` / `admins.identity`: a random 32-hex stamp per account, carried in every
  token and dashboard cookie and checked on every resolve (existing rows get a fresh one).
- SQLite: every table with an integer id is rebuilt with AUTOINCREMENT (data kept), so a
  deleted row's id is never handed out again. PostgreSQL and MySQL/MariaDB never reuse ids.
- `login_limits`: the login limiter's atomic counters.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 07:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import db.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Parents before children does not matter with SQLite's foreign keys off during migrations
# (Alembic's connection never turns them on); every table keeps its rows, indexes and keys.
INTEGER_ID_TABLES = (
    "admins",
    "redemptions",
    "quota_ledger",
    "audit_log",
    "login_attempts",
    "api_keys",
    "usage_records",
    "model_ai_online",
    "model_file",
    "model_file_egmessage",
    "model_info",
    "model_conversation",
    "model_message",
)

RANDOM_HEX = {
    "sqlite": "lower(hex(randomblob(16)))",
    "postgresql": "md5(random()::text || clock_timestamp()::text || {id})",
    "mysql": "md5(concat(rand(), uuid(), {id}))",
    "mariadb": "md5(concat(rand(), uuid(), {id}))",
}


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for table in ("users", "admins"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("identity", sa.String(length=32), nullable=True))
        bind.execute(sa.text(f"UPDATE {table} SET identity = {RANDOM_HEX[dialect].format(id='id')}"))
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("identity", existing_type=sa.String(length=32), nullable=False)
    if dialect == "sqlite":
        for table in INTEGER_ID_TABLES:
            # A table that already has AUTOINCREMENT keeps its high-water mark through the copy
            # (the copy alone would restart it at the highest id left).
            seq = _sqlite_sequence(bind, table)
            with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
                pass
            if seq is not None:
                bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
                bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), {"t": table, "s": seq})
    op.create_table(
        "login_limits",
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("window_start", db.models.UTCDateTime(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )
    with op.batch_alter_table("login_limits") as batch_op:
        batch_op.create_index("ix_login_limits_window_start", ["window_start"], unique=False)


def _sqlite_sequence(bind, table: str) -> int | None:
    has = bind.execute(sa.text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")).first()
    if has is None:
        return None
    return bind.execute(sa.text("SELECT max(seq) FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()


def downgrade() -> None:
    with op.batch_alter_table("login_limits") as batch_op:
        batch_op.drop_index("ix_login_limits_window_start")
    op.drop_table("login_limits")
    for table in ("admins", "users"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("identity")
