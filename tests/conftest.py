"""Fixtures that build real databases.

Every test that asks for `db_url` (directly or through `settings`, `session`, `client`)
runs three times: on SQLite, on PostgreSQL (`METEOR_TEST_POSTGRES_URL`) and on
MariaDB/MySQL (`METEOR_TEST_MYSQL_URL`). Each pytest run creates its own throw-away
database on the servers (so parallel runs never collide) and migrates it with Alembic.

Each test runs inside one outer transaction that is rolled back afterwards: every session
the test and the app open in this process joins that connection and turns its own
commits into savepoints (`join_transaction_mode="create_savepoint"`). Tests that need
real commits — several connections at once (threads, a live server, a second process),
lock behaviour — are marked `@pytest.mark.committed` (as are every `slow` test and the
playground, clients and browser areas) and get their tables emptied after them instead.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from backend import cache
from backend.config import Settings
from db import migrate
from db import session as session_module
from db.models import Base
from db.session import dispose_all, get_engine, get_sessionmaker, normalize_url
from tests.factories import Actor, admin_headers, make_admin, make_settings, make_user, user_headers

BACKENDS = {
    "sqlite": None,
    "postgresql": "METEOR_TEST_POSTGRES_URL",
    "mysql": "METEOR_TEST_MYSQL_URL",
}

ROOT_TESTS = Path(__file__).resolve().parent


def _create_server_database(base_url: str) -> tuple[str, callable]:
    """A fresh database on the server behind `base_url`, and how to drop it."""
    url = make_url(normalize_url(base_url))
    name = f"meteor_t_{os.getpid()}_{secrets.token_hex(3)}"
    admin_engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        if url.get_backend_name() == "postgresql":
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))

    def drop() -> None:
        dispose_all()
        with admin_engine.connect() as conn:
            if url.get_backend_name() == "postgresql":
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin_engine.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(scope="session")
def _databases(tmp_path_factory) -> Iterator[dict[str, str]]:
    created: dict[str, str] = {}
    drops = []
    yield created, drops  # filled lazily by db_url
    for drop in drops:
        drop()


@pytest.fixture(scope="session", params=list(BACKENDS))
def db_url(request, _databases, tmp_path_factory) -> str:
    """A migrated database URL on each backend in turn (skipped, saying why, when unset)."""
    backend = request.param
    created, drops = _databases
    if backend not in created:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "meteor.db"
            url = f"sqlite:///{path}"
        else:
            env = BACKENDS[backend]
            base = os.environ.get(env)
            if not base:
                pytest.skip(f"{env} is not set; {backend} tests skipped (.ci/run sets it)")
            url, drop = _create_server_database(base)
            drops.append(drop)
        migrate.upgrade(url)
        created[backend] = url
    return created[backend]


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return make_settings(db_url, tmp_path)


def _empty_tables(url: str) -> None:
    maker = get_sessionmaker(url)
    with maker.begin() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(delete(table))


# whole areas whose tests run servers, browsers or engines beside the test's own connection
COMMITTED_AREAS = ("playground", "clients", "browser")


def _needs_commits(node) -> bool:
    if node.get_closest_marker("committed") or node.get_closest_marker("slow"):
        return True
    return any(part in COMMITTED_AREAS for part in Path(str(node.path)).relative_to(ROOT_TESTS).parts[:-1])


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    """Every test reads policy rows from its own database, not a cache of an earlier test."""
    cache.forget_all()
    yield
    cache.forget_all()


@pytest.fixture(autouse=True)
def _isolated(request) -> Iterator[None]:
    """A rolled-back outer transaction per test, or (`committed`) emptied tables after it."""
    if "db_url" not in request.fixturenames:
        yield
        return
    url = normalize_url(request.getfixturevalue("db_url"))
    if _needs_commits(request.node):
        yield
        _empty_tables(url)
        return
    connection = get_engine(url).connect()
    outer = connection.begin()
    joined = sessionmaker(bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint")
    real = session_module._makers.get(url)
    session_module._makers[url] = joined
    try:
        yield
    finally:
        replaced = session_module._makers.get(url) is not joined  # e.g. dispose_all() ran
        if real is None:
            session_module._makers.pop(url, None)
        else:
            session_module._makers[url] = real
        outer.rollback()
        connection.close()
        if replaced:  # what the test wrote after that went to real commits
            _empty_tables(url)


@pytest.fixture
def session(settings) -> Iterator[Session]:
    """A plain session; the test commits what it wants to be seen by others."""
    s = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def maker(settings):
    return get_sessionmaker(settings.resolved_database_url)


# FastAPI builds every route's validators (pydantic TypeAdapters) on an app's first request:
# with a new app per test that was half of tests/seed003's time. So one API app per database,
# handed to each test with that test's settings and sessionmaker (the rolled-back one).
_api_apps: dict[str, object] = {}


@pytest.fixture
def app(settings):
    from backend.server import create_app

    url = settings.resolved_database_url
    api = _api_apps.get(url)
    if api is None:
        api = _api_apps[url] = create_app(settings, playground=False)
    api.state.settings = settings
    api.state.sessionmaker = get_sessionmaker(url)
    return api


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# --- the seed-003 accounts (tests/seed003, tests/clients): two users and an admin, signed in


@pytest.fixture
def alice(client, maker, settings) -> Actor:
    user = make_user(maker, settings, username="alice")
    return Actor(user.id, user.username, user_headers(client, user.username))


@pytest.fixture
def bob(client, maker, settings) -> Actor:
    user = make_user(maker, settings, username="bob")
    return Actor(user.id, user.username, user_headers(client, user.username))


@pytest.fixture
def admin(client, maker, settings) -> Actor:
    a = make_admin(maker, settings, name="root")
    return Actor(str(a.id), a.name, admin_headers(client, a.name))


# --- the API server with the playground mounted (tests/playground, tests/security), built
# once per database (Gradio's Blocks take seconds to build)

_playground_apps: dict[str, object] = {}


@pytest.fixture
def pg_app(db_url, settings, tmp_path_factory):
    """create_app(settings) with the playground, one per database URL."""
    from backend.server import create_app

    if db_url not in _playground_apps:
        _playground_apps[db_url] = create_app(make_settings(db_url, tmp_path_factory.mktemp("playground")))
    return _playground_apps[db_url]


@pytest.fixture(scope="module")
def pg_server(db_url, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """The app on a real uvicorn server (Gradio's queue runs in its lifespan), per database."""
    from backend.server import create_app
    from tests.live import live_server

    settings = make_settings(db_url, tmp_path_factory.mktemp("playground-live"))
    app = create_app(settings)
    with live_server(app) as base:
        yield base, app
