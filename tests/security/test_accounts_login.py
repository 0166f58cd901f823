"""Audit findings 7, 10 and 15 (forwarded headers): logins hold no transaction while bcrypt
runs, the limiter admits at most its limit of real password checks even in parallel, never
locks the right password out from an address that signed in before, does the same hashing
work for unknown names, counts a client's immediate retry once, and counts the connection's
address unless the peer is a configured proxy. On SQLite, PostgreSQL and MariaDB.

Password checks are counted by wrapping `bcrypt.checkpw` (never by timing)."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url

from backend.cli import uvicorn_options
from backend.server import create_app
from db.models import LoginLimit, User
from db.session import get_engine
from tests.factories import PASSWORD, make_settings, make_user
from tests.live import live_server


class CheckCounter:
    """Wraps bcrypt.checkpw: counts the checks per stored hash and the cost each used."""

    def __init__(self, monkeypatch, during=None) -> None:
        self.calls: list[bytes] = []
        self.lock = threading.Lock()
        self.real = bcrypt.checkpw
        self.during = during
        monkeypatch.setattr(bcrypt, "checkpw", self)

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.calls.append(hashed)
        if self.during is not None:
            self.during()
        return self.real(password, hashed)

    def count(self, stored_hash: str) -> int:
        return sum(1 for h in self.calls if h == stored_hash.encode())

    def costs(self) -> list[int]:
        return [int(h.split(b"$")[2]) for h in self.calls]


def _hash_of(maker, username: str) -> str:
    with maker() as s:
        return s.scalar(select(User.password_hash).where(User.username == username))


def _login(client, name: str, password: str, address: str | None = None):
    headers = {"X-Forwarded-For": address} if address else {}
    return client.post("/auth/login", json={"username": name, "password": password}, headers=headers)


# --- finding 7 ---------------------------------------------------------------------------


@pytest.mark.committed
def test_no_transaction_is_open_while_bcrypt_runs(db_url, tmp_path, maker, monkeypatch):
    settings = make_settings(db_url, tmp_path, bcrypt_rounds=6)
    make_user(maker, settings, username="solo")
    engine = get_engine(db_url)
    seen: list[tuple[int, bool]] = []
    sqlite_path = make_url(db_url).database if db_url.startswith("sqlite") else None

    def probe() -> None:
        write_lock_free = True
        if sqlite_path:  # could another connection take the write lock right now?
            con = sqlite3.connect(sqlite_path, timeout=0, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("ROLLBACK")
            except sqlite3.OperationalError:
                write_lock_free = False
            finally:
                con.close()
        seen.append((engine.pool.checkedout(), write_lock_free))

    CheckCounter(monkeypatch, during=probe)
    with TestClient(create_app(settings, playground=False)) as client:
        assert _login(client, "solo", PASSWORD).status_code == 200
        assert _login(client, "solo", "wrong-password-1").status_code == 401
        assert _login(client, "nobody-here", "wrong-password-2").status_code == 401
    assert len(seen) == 3
    assert seen == [(0, True)] * 3, "a connection (or SQLite's write lock) was held during a password check"


@pytest.mark.committed
def test_thirty_concurrent_correct_logins_all_succeed(db_url, tmp_path, maker):
    settings = make_settings(db_url, tmp_path, bcrypt_rounds=8)
    names = [f"class{i:02d}" for i in range(30)]
    for name in names:
        make_user(maker, settings, username=name)
    with live_server(create_app(settings, playground=False), settings) as url:

        def login(name: str) -> int:
            return httpx.post(
                f"{url}/auth/login", json={"username": name, "password": PASSWORD}, timeout=60
            ).status_code

        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(login, names))
    assert codes == [200] * 30


# --- finding 10 --------------------------------------------------------------------------


@pytest.mark.committed
def test_thirty_parallel_wrong_passwords_get_at_most_the_limit_of_checks(db_url, tmp_path, maker, monkeypatch):
    settings = make_settings(db_url, tmp_path)
    make_user(maker, settings, username="target")
    stored = _hash_of(maker, "target")
    # each check takes a moment, so the 30 attempts really overlap (widens the race; the
    # assertion holds however they interleave)
    counter = CheckCounter(monkeypatch, during=lambda: time.sleep(0.05))
    with live_server(create_app(settings, playground=False), settings) as url:
        start = threading.Barrier(30)

        def guess(i: int) -> int:
            start.wait(timeout=30)
            body = {"username": "target", "password": f"guess-{i:03d}"}
            return httpx.post(f"{url}/auth/login", json=body, timeout=60).status_code

        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(guess, range(30)))
    limit = settings.login_max_failures_per_account_address
    assert set(codes) <= {401, 429}, codes
    assert counter.count(stored) == codes.count(401) <= limit
    assert codes.count(429) >= 30 - limit


@pytest.mark.committed  # a live server
def test_guesses_from_everywhere_do_not_lock_out_a_known_address(db_url, tmp_path, maker):
    settings = make_settings(db_url, tmp_path, trusted_proxies="127.0.0.1")
    make_user(maker, settings, username="boss")
    home, elsewhere = "10.0.0.1", "10.9.9.9"
    with live_server(create_app(settings, playground=False), settings) as url, httpx.Client(base_url=url) as client:
        assert _login(client, "boss", PASSWORD, home).status_code == 200  # home is now known
        for i in range(settings.login_max_failures_per_account + 5):  # from many addresses
            assert _login(client, "boss", f"nope-{i}", f"10.1.{i // 200}.{i % 200 + 1}").status_code in (401, 429)
        # the account limit stops unknown addresses, even with the right password ...
        r = _login(client, "boss", PASSWORD, elsewhere)
        assert r.status_code == 429 and r.json()["code"] == "LOGIN_ERROR"
        # ... but not the address that signed in before
        assert _login(client, "boss", PASSWORD, home).status_code == 200
        # and guesses from the known address still stop at the per (account, address) limit
        for i in range(settings.login_max_failures_per_account_address):
            assert _login(client, "boss", f"home-guess-{i}", home).status_code == 401
        assert _login(client, "boss", PASSWORD, home).status_code == 429


def test_unknown_and_known_names_do_the_same_hashing_work(db_url, tmp_path, maker, monkeypatch):
    settings = make_settings(db_url, tmp_path, bcrypt_rounds=6)
    make_user(maker, settings, username="known")
    with TestClient(create_app(settings, playground=False)) as client:
        counter = CheckCounter(monkeypatch)
        assert _login(client, "known", "wrong-pass-1").status_code == 401
        known_costs = counter.costs()
        counter.calls.clear()
        assert _login(client, "unknown-name", "wrong-pass-1").status_code == 401
        unknown_costs = counter.costs()
    assert known_costs == unknown_costs == [settings.bcrypt_rounds]


def test_an_immediate_retry_of_the_same_password_counts_once(db_url, tmp_path, maker, monkeypatch):
    settings = make_settings(db_url, tmp_path, login_retry_seconds=60)
    make_user(maker, settings, username="desk")
    stored = _hash_of(maker, "desk")
    with TestClient(create_app(settings, playground=False)) as client:
        counter = CheckCounter(monkeypatch)
        assert _login(client, "desk", "typo-pass").status_code == 401
        assert _login(client, "desk", "typo-pass").status_code == 401  # the desktop client's retry
        assert counter.count(stored) == 1
        limit = settings.login_max_failures_per_account_address
        for i in range(limit - 1):  # the retry did not use up a slot
            assert _login(client, "desk", f"other-{i}").status_code == 401
        assert counter.count(stored) == limit
        assert _login(client, "desk", "one-more").status_code == 429
    with maker() as s:
        pair = s.scalar(select(LoginLimit.count).where(LoginLimit.subject.like("pair:user:desk|%")))
    assert pair == limit


# --- finding 15: forwarded headers --------------------------------------------------------


def test_uvicorn_trusts_no_forwarded_headers_by_default(tmp_path, db_url):
    assert uvicorn_options(make_settings(db_url, tmp_path)) == {"proxy_headers": False, "forwarded_allow_ips": ""}
    trusted = uvicorn_options(make_settings(db_url, tmp_path, trusted_proxies="10.0.0.5, 192.168.0.0/24"))
    assert trusted == {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.5/32", "192.168.0.0/24"]}


def test_settings_refuse_a_bad_trusted_proxy(tmp_path, db_url):
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        make_settings(db_url, tmp_path, trusted_proxies="not-an-address")


def _spray(url: str, count: int, tag: str) -> list[int]:
    with httpx.Client(base_url=url) as client:
        return [_login(client, f"{tag}{i}", f"pw-{i}-x", f"203.0.113.{i + 1}").status_code for i in range(count)]


@pytest.mark.committed  # a live server
def test_forwarded_for_from_an_untrusted_peer_cannot_rotate_the_address(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)  # no trusted proxies
    limit = settings.login_max_failures_per_address
    with live_server(create_app(settings, playground=False), settings) as url:
        codes = _spray(url, limit + 3, "ghost")
    assert codes[:limit] == [401] * limit and codes[limit:] == [429] * 3


@pytest.mark.committed  # a live server
def test_forwarded_for_from_a_trusted_proxy_is_the_address(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path, trusted_proxies="127.0.0.1")
    limit = settings.login_max_failures_per_address
    with live_server(create_app(settings, playground=False), settings) as url:
        codes = _spray(url, limit + 3, "spook")
    assert codes == [401] * (limit + 3)  # each client address has its own count
