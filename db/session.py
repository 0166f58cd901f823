"""Engine and sessionmaker, built once per database URL.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and every transaction
starts with BEGIN IMMEDIATE: a deferred transaction that reads and then writes can fail
at once with "database is locked" when another writer got in between, which would turn
concurrent quota updates into errors instead of waits. A transaction that only reads opts
out with `read_only(session)` (a plain deferred BEGIN: WAL readers never block writers).
"""

from __future__ import annotations

import threading
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}


def normalize_url(url: str) -> str:
    """Pick the drivers Meteor ships: psycopg 3 for PostgreSQL, PyMySQL for MySQL/MariaDB."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    elif u.drivername in ("mysql", "mariadb"):
        u = u.set(drivername="mysql+pymysql")
    if u.drivername.startswith("mysql") and "charset" not in u.query:
        u = u.update_query_dict({"charset": "utf8mb4"})
    return u.render_as_string(hide_password=False)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "meteor_read_only"


def read_only(session: Session) -> None:
    """Start `session`'s next transaction as a read: on SQLite a deferred BEGIN that takes no
    write lock (elsewhere reads take none anyway). Call before the transaction's first
    statement, and end it (commit / rollback) before writing."""
    session.connection(execution_options={READ_ONLY: True})


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE (without RETURNING) matched. `Session.execute` returns a
    `CursorResult` for those but is typed as returning a plain `Result` (SQLAlchemy #12913)."""
    return cast(CursorResult[Any], result).rowcount


def get_engine(url: str) -> Engine:
    """The engine for `url`, created on first use and shared by the process."""
    url = normalize_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                _configure_sqlite(engine)
            else:
                engine = create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True, pool_recycle=1800)
            _engines[url] = engine
        return engine


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    """One sessionmaker per database; open a session per action: `with maker.begin() as s:`."""
    url = normalize_url(url)
    with _lock:
        maker = _makers.get(url)
    if maker is None:
        maker = sessionmaker(bind=get_engine(url), expire_on_commit=False)
        with _lock:
            _makers.setdefault(url, maker)
            maker = _makers[url]
    return maker


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()
