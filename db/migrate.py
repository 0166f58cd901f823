"""Apply Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from db.session import normalize_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (default: the newest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


@contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Serialize migrate + bootstrap across processes starting at once on one database
    (a PostgreSQL advisory lock, a MySQL named lock, a file lock beside a SQLite file)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.startup-lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(7244190)"))
                release = "SELECT pg_advisory_unlock(7244190)"
            else:
                conn.execute(text("SELECT GET_LOCK('meteor_startup', 120)"))
                release = "SELECT RELEASE_LOCK('meteor_startup')"
            try:
                yield
            finally:
                conn.execute(text(release))
    finally:
        engine.dispose()
