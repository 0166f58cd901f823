"""Test data factories: the test Settings, and real rows through the real services, committed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from backend.accounts import service as accounts
from backend.billing import quota
from backend.config import Settings
from db.models import Admin, User

PASSWORD = "correct-horse-1"
TEST_SECRET_KEY = "q0o1oPJuBcSz3-yXYXq5tTQW6H5t0VsDDbBD9y0yTUE="


def make_settings(db_url: str, data_dir: Path, **overrides) -> Settings:
    values = dict(
        database_url=db_url,
        data_dir=data_dir,
        jwt_secret="jwt-" + "k" * 40,
        secret_key=TEST_SECRET_KEY,
        cookie_key="cookie-" + "c" * 40,
        bcrypt_rounds=4,
        sweeper_interval_seconds=3600,
        model_titles=False,  # background title jobs would outlive their test; tests/gateway/test_titles.py turns it on
    )
    values.update(overrides)
    return Settings(**values)


def make_user(
    maker: sessionmaker,
    settings: Settings,
    *,
    username: str | None = None,
    academy: str | None = "CS",
    tokens: int = 0,
    pic_times: int = 0,
    password: str = PASSWORD,
) -> User:
    with maker.begin() as s:
        user = accounts.create_user(
            s, settings, username=username or f"u_{secrets.token_hex(4)}", password=password, academy=academy
        )
        if tokens or pic_times:
            quota.grant(s, user_id=user.id, tokens=tokens, pic_times=pic_times, actor="test")
        s.flush()
        s.expunge(user)
    return user


def make_admin(
    maker: sessionmaker,
    settings: Settings,
    *,
    name: str | None = None,
    is_super: bool = False,
    password: str = PASSWORD,
) -> Admin:
    with maker.begin() as s:
        admin = accounts.create_admin(
            s, settings, name=name or f"a_{secrets.token_hex(4)}", password=password, is_super=is_super, actor=None
        )
        s.flush()
        s.expunge(admin)
    return admin


def admin_headers(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/admin/login", json={"admin": name, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def user_headers(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def super_admin_headers(client: TestClient, maker: sessionmaker, settings: Settings) -> dict[str, str]:
    admin = make_admin(maker, settings, is_super=True)
    return admin_headers(client, admin.name)


@dataclass
class Actor:
    """A signed-in account of the seed-003 tests: its id, its name, its Bearer headers."""

    id: str
    name: str
    headers: dict[str, str]
