"""Audit findings 4 and 12: a deleted account's tokens never come back (ids are never
reused, tokens carry the account's identity stamp), and a password change revokes the
user's API keys. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from backend import security
from db import migrate
from db.models import Admin, ApiKey, User
from tests.factories import PASSWORD, admin_headers, make_admin, make_user, super_admin_headers, user_headers

TABLE = {"table": "user"}


def _login_admin(client, name: str) -> dict:
    r = client.post("/admin/login", json={"admin": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


def test_deleted_admin_tokens_stay_dead_when_a_new_admin_arrives(client, maker, settings):
    root = super_admin_headers(client, maker, settings)
    old = make_admin(maker, settings, name="second")  # the highest id
    tokens = _login_admin(client, "second")
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=access).status_code == 200

    assert client.post("/admin/delete_admin", json={"target_admin": "second"}, headers=root).json()["code"] == 0
    r = client.post("/admin/add_admin", json={"admin": "third", "password": PASSWORD}, headers=root)
    assert r.json()["code"] == 0
    with maker() as s:
        new = s.scalar(select(Admin).where(Admin.name == "third"))
    assert new.id != old.id  # SQLite used to hand the deleted admin's id out again

    r = client.get("/admin/query_table_count", params={"table": "user"}, headers=access)
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    assert client.get("/admin/refresh", headers=refresh).status_code == 401


def test_admin_token_for_the_right_id_and_version_but_another_identity_is_refused(client, maker, settings):
    admin = make_admin(maker, settings)
    with maker() as s:
        row = s.get(Admin, admin.id)
        version, identity = row.token_version, row.identity
    assert identity and len(identity) == 32
    for stamp in (None, "0" * 32):  # a token from before the stamp, and another account's
        forged = security.issue_token(
            settings,
            subject=str(admin.id),
            role="admin",
            kind="access",
            version=version,
            ttl=timedelta(minutes=5),
            identity=stamp,
        )
        r = client.get(
            "/admin/query_table_count", params={"table": "user"}, headers={"Authorization": f"Bearer {forged}"}
        )
        assert r.status_code == 401, stamp
    assert (
        client.get(
            "/admin/query_table_count", params={"table": "user"}, headers=admin_headers(client, admin.name)
        ).status_code
        == 200
    )


def test_user_token_is_bound_to_the_identity_not_only_id_and_version(client, maker, settings):
    user = make_user(maker, settings, username="carol")
    headers = user_headers(client, "carol")
    assert client.get("/auth/me", headers=headers).status_code == 200
    # the same id and version under a new identity (what a re-created account would have)
    with maker.begin() as s:
        s.get(User, user.id).identity = "f" * 32
    assert client.get("/auth/me", headers=headers).status_code == 401
    r = client.post("/auth/login", json={"username": "carol", "password": PASSWORD}).json()
    claims = security.decode_token(settings, r["access_token"], role="user", kind="access")
    assert claims["idn"] == "f" * 32
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {r['access_token']}"}).status_code == 200


def test_deleted_user_name_reused_old_tokens_refused(client, maker, settings):
    root = super_admin_headers(client, maker, settings)
    make_user(maker, settings, username="dora")
    login = client.post("/auth/login", json={"username": "dora", "password": PASSWORD}).json()
    assert client.post("/admin/delete_normal_user", json={"target_username": "dora"}, headers=root).json()["code"] == 0
    assert client.post("/auth/register", json={"username": "dora", "password": PASSWORD}).json()["code"] == 0
    for token, path in ((login["access_token"], "/auth/me"), (login["refresh_token"], "/auth/refresh")):
        method = client.get if path == "/auth/me" else client.post
        assert method(path, headers={"Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.committed
def test_migration_keeps_rows_stamps_identities_and_stops_id_reuse(db_url, settings):
    """0002 -> 0003 on a database with rows: rows kept, each account stamped differently, and
    from then on a deleted highest id is not handed out again. (An id deleted before the
    upgrade is not remembered by SQLite; the tokens of such an account carry no identity
    stamp and are refused anyway.)"""
    migrate.downgrade(db_url, "0002")
    try:
        from db.session import get_sessionmaker

        maker = get_sessionmaker(db_url)
        with maker.begin() as s:
            for i in (1, 2, 3):
                s.execute(
                    text(
                        "INSERT INTO admins (name, password_hash, is_super, token_version, created_at) "
                        "VALUES (:name, 'x', :sup, 0, CURRENT_TIMESTAMP)"
                    ),
                    {"name": f"m{i}", "sup": i == 1},
                )
            for i in range(3):
                s.execute(
                    text(
                        "INSERT INTO users (id, username, password_hash, tokens, pic_times, status, token_version, "
                        "created_at) VALUES (:id, :name, 'x', 0, 0, 'active', 0, CURRENT_TIMESTAMP)"
                    ),
                    {"id": f"{i:032x}", "name": f"mu{i}"},
                )
            s.execute(text("DELETE FROM admins WHERE name = 'm3'"))
    finally:
        migrate.upgrade(db_url)
    with maker.begin() as s:
        admins = s.scalars(select(Admin).order_by(Admin.id)).all()
        users = s.scalars(select(User).order_by(User.id)).all()
        assert [a.name for a in admins] == ["m1", "m2"] and [u.username for u in users] == ["mu0", "mu1", "mu2"]
        stamps = [a.identity for a in admins] + [u.identity for u in users]
        assert all(len(x) == 32 for x in stamps) and len(set(stamps)) == len(stamps)
        s.add(Admin(name="m4", password_hash="x"))
    with maker.begin() as s:
        m4 = s.scalar(select(Admin.id).where(Admin.name == "m4"))
        s.execute(text("DELETE FROM admins WHERE id = :id"), {"id": m4})
    with maker.begin() as s:
        s.add(Admin(name="m5", password_hash="x"))
    with maker() as s:
        assert s.scalar(select(Admin.id).where(Admin.name == "m5")) > m4  # a deleted id is never handed out again


# --- finding 12 --------------------------------------------------------------------------


def _new_key(client, headers) -> str:
    r = client.post("/user/api_keys", json={"name": "laptop"}, headers=headers)
    assert r.json()["code"] == 0, r.text
    return r.json()["key"]


def _key_works(client, key: str) -> bool:
    return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_own_password_change_revokes_api_keys(client, maker, settings):
    user = make_user(maker, settings)
    headers = user_headers(client, user.username)
    key = _new_key(client, headers)
    assert _key_works(client, key)
    r = client.post(
        "/auth/change_password", json={"old_password": PASSWORD, "new_password": "new-secret-9"}, headers=headers
    )
    assert r.json()["code"] == 0
    assert not _key_works(client, key)
    with maker() as s:
        assert s.scalar(select(ApiKey.revoked_at).where(ApiKey.user_id == user.id)) is not None
    # a key made after the change works
    fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert _key_works(client, _new_key(client, fresh))


def test_admin_password_reset_revokes_api_keys_other_edits_do_not(client, maker, settings):
    root = super_admin_headers(client, maker, settings)
    user = make_user(maker, settings)
    key = _new_key(client, user_headers(client, user.username))
    body = {"target_user": user.username, "new_user_info": {"new_academy": "Math"}}
    assert client.post("/admin/modify_normal_user", json=body, headers=root).json()["code"] == 0
    assert _key_works(client, key)
    body = {"target_user": user.username, "new_user_info": {"new_password": "reset-pass-7"}}
    assert client.post("/admin/modify_normal_user", json=body, headers=root).json()["code"] == 0
    assert not _key_works(client, key)


def test_a_playground_session_of_a_deleted_account_never_signs_in_its_namesake(maker, settings):
    """The playground's session cookie and sign-in link carry the identity stamp, like API tokens."""
    from backend.playground import session as playground

    old = make_user(maker, settings, username="ghost")
    with maker() as s:
        cookie = playground.session_token(settings, playground._load(s, "user", old.id))
        assert playground.authenticate(s, settings, cookie=cookie).id == old.id
    with maker.begin() as s:
        s.delete(s.get(User, old.id))
    new = make_user(maker, settings, username="ghost")
    forged = security.issue_token(
        settings, subject=new.id, role="user", kind=playground.SESSION_KIND, version=new.token_version,
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    with maker() as s:
        assert playground.authenticate(s, settings, cookie=cookie) is None
        assert playground.authenticate(s, settings, cookie=forged) is None  # no stamp: refused
        good = playground.session_token(settings, playground._load(s, "user", new.id))
        assert playground.authenticate(s, settings, cookie=good).id == new.id
