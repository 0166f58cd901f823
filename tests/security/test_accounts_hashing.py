"""Audit finding 7, the rest: every route that hashes a new password (register, the
StrangeLoop sign-up, an admin's create / reset, the user's own change, the dashboard's)
does the bcrypt work before it opens its write transaction, so on SQLite other writers
are not kept waiting behind it. On SQLite, PostgreSQL and MariaDB.

Proved by wrapping `bcrypt.hashpw` / `bcrypt.checkpw` (never by timing): while they run,
no connection is checked out of the pool and, on SQLite, another connection that will not
wait (timeout 0) takes the write lock and commits."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from backend import security
from backend.dashboard import auth as dashboard_auth
from backend.server import create_app
from db.models import Admin, User
from db.session import get_engine
from tests.factories import PASSWORD, admin_headers, make_admin, make_settings, make_user, user_headers

pytestmark = pytest.mark.committed  # it watches the pool and the SQLite write lock while bcrypt runs

NEW = "brand-new-pass-7"


def _sqlite_path(db_url: str) -> str | None:
    return make_url(db_url).database if db_url.startswith("sqlite") else None


def _write_lock_free(db_url: str) -> bool:
    """Whether another SQLite connection could take the write lock this instant."""
    con = sqlite3.connect(_sqlite_path(db_url), timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


class HashProbe:
    """Wraps bcrypt's hash and check: records, on every call, how many connections are
    checked out and (SQLite) whether the write lock is free."""

    def __init__(self, monkeypatch, db_url: str) -> None:
        self.db_url = db_url
        self.engine = get_engine(db_url)
        self.seen: list[tuple[str, int, bool]] = []
        real_hash, real_check = bcrypt.hashpw, bcrypt.checkpw

        def hashpw(password: bytes, salt: bytes) -> bytes:
            self._look("hash")
            return real_hash(password, salt)

        def checkpw(password: bytes, hashed: bytes) -> bool:
            self._look("check")
            return real_check(password, hashed)

        monkeypatch.setattr(bcrypt, "hashpw", hashpw)
        monkeypatch.setattr(bcrypt, "checkpw", checkpw)

    def _look(self, what: str) -> None:
        free = _write_lock_free(self.db_url) if _sqlite_path(self.db_url) else True
        self.seen.append((what, self.engine.pool.checkedout(), free))


@pytest.fixture
def world(db_url, tmp_path, maker):
    settings = make_settings(db_url, tmp_path)
    make_user(maker, settings, username="carol")
    make_admin(maker, settings, name="root", is_super=True)
    make_admin(maker, settings, name="helper")
    with TestClient(create_app(settings, playground=False)) as client:
        yield settings, client, {"user": user_headers(client, "carol"), "admin": admin_headers(client, "root")}


ROUTES = {
    "register": ("/auth/register", None, {"username": "newbie", "password": NEW}),
    "sys create": ("/sys/user/create", None, {"account": "newbie", "password": NEW, "passwordAgain": NEW}),
    "own change": ("/auth/change_password", "user", {"old_password": PASSWORD, "new_password": NEW}),
    "add user": ("/admin/add_normal_user", "admin", {"username": "newbie", "password": NEW}),
    "reset user": (
        "/admin/modify_normal_user",
        "admin",
        {"target_user": "carol", "new_user_info": {"new_password": NEW}},
    ),
    "add admin": ("/admin/add_admin", "admin", {"admin": "newbie", "password": NEW}),
    "reset admin": ("/admin/modify_admin", "admin", {"target_admin": "helper", "new_password": NEW}),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_new_passwords_are_hashed_with_no_transaction_open(world, monkeypatch, db_url, route):
    settings, client, headers = world
    path, who, body = ROUTES[route]
    probe = HashProbe(monkeypatch, db_url)
    r = client.post(path, json=body, headers=headers[who] if who else {})
    assert r.status_code == 200 and r.json()["code"] in (0, 200), r.text
    assert [what for what, _, _ in probe.seen].count("hash") == 1
    assert all(held == 0 and free for _, held, free in probe.seen), f"{route}: {probe.seen}"


def test_the_dashboard_password_change_hashes_with_no_transaction_open(world, monkeypatch, db_url, maker):
    settings, _, _ = world
    probe = HashProbe(monkeypatch, db_url)
    with maker() as s:
        carol = dashboard_auth.load_account(s, "user", s.scalar(select(User.id).where(User.username == "carol")))
        root = dashboard_auth.load_account(s, "admin", str(s.scalar(select(Admin.id).where(Admin.name == "root"))))
    for account in (carol, root):
        version = dashboard_auth.change_password(maker, settings, account, old_password=PASSWORD, new_password=NEW)
        assert version == account.token_version + 1
    assert [what for what, _, _ in probe.seen] == ["check", "hash"] * 2
    assert all(held == 0 and free for _, held, free in probe.seen), probe.seen


def test_another_writer_commits_while_change_password_hashes(world, monkeypatch, db_url, maker):
    """The request is held inside bcrypt (an Event); meanwhile another connection writes the
    same user's row and commits without waiting; then the change completes."""
    settings, client, headers = world
    hashing, release = threading.Event(), threading.Event()
    real_hash = bcrypt.hashpw

    def held_hashpw(password: bytes, salt: bytes) -> bytes:
        hashing.set()
        release.wait(60)
        return real_hash(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", held_hashpw)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.post, "/auth/change_password", json=ROUTES["own change"][2], headers=headers["user"]
        )
        try:
            assert hashing.wait(60), "change_password never reached bcrypt"
            assert get_engine(db_url).pool.checkedout() == 0
            if _sqlite_path(db_url):  # a writer that will not wait: it fails if the lock is held
                con = sqlite3.connect(_sqlite_path(db_url), timeout=0, isolation_level=None)
                try:
                    con.execute("BEGIN IMMEDIATE")
                    con.execute("UPDATE users SET email = 'meanwhile@x' WHERE username = 'carol'")
                    con.execute("COMMIT")
                finally:
                    con.close()
            else:
                with maker.begin() as s:
                    s.execute(update(User).where(User.username == "carol").values(email="meanwhile@x"))
        finally:
            release.set()
        r = pending.result(timeout=60)
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    with maker() as s:
        carol = s.scalar(select(User).where(User.username == "carol"))
        assert carol.email == "meanwhile@x" and security.verify_password(NEW, carol.password_hash)


def test_a_change_racing_another_change_is_refused_not_lost(world, monkeypatch, db_url, maker):
    """Step 1 checked the old password against the hash it read; if the password changed
    before step 2 writes, the change is refused (the other change stays)."""
    settings, client, headers = world
    real_check = bcrypt.checkpw

    def check_then_race(password: bytes, hashed: bytes) -> bool:
        ok = real_check(password, hashed)
        with maker.begin() as s:  # someone (an admin reset) changes the password meanwhile
            s.get(
                User, s.scalar(select(User.id).where(User.username == "carol"))
            ).password_hash = security.hash_password("admin-set-pass-1", 4)
        return ok

    monkeypatch.setattr(bcrypt, "checkpw", check_then_race)
    r = client.post("/auth/change_password", json=ROUTES["own change"][2], headers=headers["user"])
    assert r.status_code == 401 and r.json()["code"] == "LOGIN_ERROR"
    monkeypatch.setattr(bcrypt, "checkpw", real_check)
    with maker() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "carol"))
    assert security.verify_password("admin-set-pass-1", stored)


def test_the_dashboards_create_and_reset_hash_before_their_first_query(world, monkeypatch, db_url, maker):
    """pages/users.py and pages/admins.py call the services first thing in `run_action`'s
    transaction (`maker.begin()`), which opens no connection until its first statement; the
    services hash before that statement."""
    from backend.accounts import service as accounts

    settings, _, _ = world
    probe = HashProbe(monkeypatch, db_url)
    actions = (
        lambda s: accounts.create_user(s, settings, username="dash-new", password=NEW, actor="admin:root"),
        lambda s: accounts.create_admin(s, settings, name="dash-admin", password=NEW, actor="admin:root"),
        lambda s: accounts.modify_admin(s, settings, target="helper", actor="admin:root", new_password=NEW),
        lambda s: accounts.modify_user(s, settings, target_username="carol", actor="admin:root", new_password=NEW),
    )
    for action in actions:
        with maker.begin() as s:
            action(s)
    assert [what for what, _, _ in probe.seen] == ["hash"] * 4
    assert all(held == 0 and free for _, held, free in probe.seen), probe.seen
    with maker() as s:
        for model, column, name in ((User, User.username, "carol"), (Admin, Admin.name, "helper")):
            assert security.verify_password(NEW, s.scalar(select(model.password_hash).where(column == name)))
