"""Audit finding 5: a dashboard cookie stands for one account (its id and identity stamp),
not for a name: after the account is deleted or renamed and the name registered again, the
old cookie signs nobody in. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import datetime, timedelta

import jwt
from sqlalchemy import select

from backend.accounts import service as accounts
from backend.accounts.identity import Principal
from backend.dashboard import auth
from db.models import Admin, User
from tests.factories import PASSWORD, make_admin, make_user


def _decode(settings, token: str) -> dict:
    return jwt.decode(token, settings.cookie_key.get_secret_value(), algorithms=["HS256"])


def _cookie(settings, account: Principal) -> dict:
    token = auth.encode_cookie(
        settings,
        username=account.name,
        kind=account.kind,
        version=account.token_version,
        account_id=account.id,
        identity=account.identity,
    )
    return _decode(settings, token)


def _name_only_cookie(settings, kind: str, name: str, version: int = 0) -> dict:
    """What the cookie held before: the name, kind and version only."""
    exp = (datetime.now() + timedelta(days=7)).timestamp()
    claims = {"username": name, "exp_date": exp, "kind": kind, "ver": version}
    return _decode(settings, jwt.encode(claims, settings.cookie_key.get_secret_value(), algorithm="HS256"))


def _account(maker, kind: str, name: str) -> Principal:
    with maker() as s:
        found = auth.find_account(s, kind, name)
    assert found is not None
    return found[0]


def _verify(maker, settings, claims):
    with maker() as s:
        return auth.verify_cookie(s, settings, claims)


def test_cookie_of_a_deleted_user_does_not_sign_in_the_new_owner_of_the_name(maker, settings):
    make_user(maker, settings, username="alice")
    old = _account(maker, "user", "alice")
    cookie = _cookie(settings, old)
    assert _verify(maker, settings, cookie).id == old.id
    with maker.begin() as s:
        accounts.delete_user(s, username="alice", actor="test")
    make_user(maker, settings, username="alice")
    assert _verify(maker, settings, cookie) is None
    assert _verify(maker, settings, _name_only_cookie(settings, "user", "alice")) is None
    new = _account(maker, "user", "alice")
    assert new.id != old.id and _verify(maker, settings, _cookie(settings, new)).id == new.id


def test_cookie_of_a_renamed_user_does_not_follow_the_name(maker, settings):
    make_user(maker, settings, username="bert")
    cookie = _cookie(settings, _account(maker, "user", "bert"))
    with maker.begin() as s:
        accounts.modify_user(s, settings, target_username="bert", actor="test", new_username="bertram")
    make_user(maker, settings, username="bert")
    assert _verify(maker, settings, cookie) is None


def test_cookie_of_a_deleted_admin_does_not_sign_in_the_next_admin_of_that_name(maker, settings):
    make_admin(maker, settings, name="root", is_super=True)
    make_admin(maker, settings, name="ops")
    old = _account(maker, "admin", "ops")
    cookie = _cookie(settings, old)
    assert _verify(maker, settings, cookie) is not None
    with maker.begin() as s:
        accounts.delete_admin(s, target="ops", actor="test")
    make_admin(maker, settings, name="ops")
    assert _verify(maker, settings, cookie) is None
    assert _verify(maker, settings, _name_only_cookie(settings, "admin", "ops")) is None


def test_cookie_with_the_right_id_but_another_identity_is_refused(maker, settings):
    user = make_user(maker, settings)
    cookie = _cookie(settings, _account(maker, "user", user.username))
    with maker.begin() as s:
        s.get(User, user.id).identity = "e" * 32  # same id, same version, another identity
    assert _verify(maker, settings, cookie) is None
    assert _verify(maker, settings, {**cookie, "idn": ""}) is None


def test_set_cookie_writes_the_account_id_and_identity(maker, settings):
    """The cookie the gate writes (RevocableCookie.set_cookie) carries id and stamp."""
    make_admin(maker, settings, name="writer", password=PASSWORD)

    class Manager:
        def __init__(self) -> None:
            self.values: dict[str, str] = {}

        def set(self, name, value, expires_at=None) -> None:
            self.values[name] = value

    class Model:
        cookie_expiry_days = 7.0
        cookie_name = auth.COOKIE_NAME
        cookie_manager = Manager()

    class Inner:
        cookie_model = Model()

    directory = auth.AccountDirectory(maker, settings, "admin")
    cookie = auth.RevocableCookie(Inner(), directory, {"username": "writer"})
    cookie.set_cookie()
    claims = _decode(settings, Model.cookie_manager.values[auth.COOKIE_NAME])
    with maker() as s:
        admin = s.scalar(select(Admin).where(Admin.name == "writer"))
    assert claims["aid"] == str(admin.id) and claims["idn"] == admin.identity and claims["kind"] == "admin"
    assert _verify(maker, settings, claims).id == str(admin.id)
