"""Engine and sessionmaker, built once per database URL.

SQLite runs in WAL mode with a busy timeout and foreign keys on, and every transaction
starts with BEGIN IMMEDIATE: a deferred transaction that reads and then writes can fail
at once with "database is locked" when another writer got in between, which would turn
concurrent quota updates into errors instead of waits. A transaction that only reads opts
out with `read_only(session)` (a plain deferred BEGIN: WAL readers never block writers).

Writers of one SQLite database in this process also queue on a lock (`_Writers`) before
BEGIN IMMEDIATE: SQLite's busy handler polls with sleeps growing to 100 ms, so under a
hundred concurrent chats most waiters slept while the database was free (profiled: the
write hops took 70-90 ms at c = 200 instead of ~2 ms). Other processes still wait on the busy
timeout.
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


SQLITE_POOL_SIZE = 32
WRITER_WAIT_SECONDS = 30.0  # = the busy timeout; past it BEGIN IMMEDIATE waits on SQLite alone


class _Writers:
    """One write transaction at a time per SQLite engine in this process, handed over the
    moment the holder commits or rolls back. A connection that somehow ends without either
    (invalidated, closed) gives the lock back when the pool takes it in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: object | None = None

    def acquire(self, raw: object) -> None:
        if self._holder is raw:
            return
        if self._lock.acquire(timeout=WRITER_WAIT_SECONDS):
            self._holder = raw

    def release(self, raw: object) -> None:
        if raw is not None and self._holder is raw:
            self._holder = None
            self._lock.release()


def _raw(connection: object) -> object:
    return getattr(connection, "dbapi_connection", connection)


def _configure_sqlite(engine: Engine) -> None:
    writers = _Writers()
    dialect = engine.dialect
    do_commit, do_rollback = dialect.do_commit, dialect.do_rollback

    def commit_then_release(dbapi_connection) -> None:
        try:
            do_commit(dbapi_connection)
        finally:
            writers.release(_raw(dbapi_connection))

    def rollback_then_release(dbapi_connection) -> None:
        try:
            do_rollback(dbapi_connection)
        finally:
            writers.release(_raw(dbapi_connection))

    dialect.do_commit = commit_then_release  # type: ignore[method-assign]
    dialect.do_rollback = rollback_then_release  # type: ignore[method-assign]

    for name in ("checkin", "close", "invalidate", "soft_invalidate"):
        event.listen(engine, name, lambda dbapi_conn, *_rest: writers.release(dbapi_conn))

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
            return
        raw = conn.connection.dbapi_connection
        writers.acquire(raw)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            writers.release(raw)
            raise


READ_ONLY = "meteor_read_only"


def read_only(session: Session) -> None:
    """Start `session`'s next transaction as a read: on SQLite a deferred BEGIN that takes no
    write lock (elsewhere reads take none anyway). Call before the transaction's first
    statement, and end it (commit / rollback) before writing."""
    session.connection(execution_options={READ_ONLY: True})


def reading(session: Session) -> Session:
    """`read_only` unless a transaction is already open: for code that reads only when a
    cache misses, so a hit opens no transaction (no connection taken from the pool)."""
    if not session.in_transaction():
        read_only(session)
    return session


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
                # as many pooled connections as the gateway has database threads (backend.chat.gateway:
                # DB_THREADS), so a busy server never opens and closes overflow connections per request
                in_memory = make_url(url).database in (None, "", ":memory:")
                pool = {} if in_memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 8}
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
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
