"""Seed-000 authentication: register, login, tokens, revocation, brute-force limits."""

from datetime import timedelta

from backend import security
from backend.accounts import service as accounts
from db.models import User
from tests.factories import PASSWORD, admin_headers, make_admin, make_user, user_headers


def test_register_creates_user_with_zero_quota(client, session):
    r = client.post(
        "/auth/register", json={"username": "bob", "password": "pw123456", "email": "b@x.cn", "academy": "Physics"}
    )
    assert r.status_code == 200 and r.json() == {"code": 0, "msg": "用户注册成功"}
    user = accounts.get_user_by_name(session, "bob")
    assert (user.tokens, user.pic_times, user.academy) == (0, 0, "Physics")
    assert user.password_hash.startswith("$2") and "pw123456" not in user.password_hash


def test_register_duplicate_name_is_409(client):
    body = {"username": "bob", "password": "pw123456"}
    assert client.post("/auth/register", json=body).status_code == 200
    r = client.post("/auth/register", json=body)
    assert r.status_code == 409 and r.json()["code"] == "USER_NAME_REPEAT"


def test_register_short_password_is_register_error(client, session):
    r = client.post("/auth/register", json={"username": "bob", "password": "123"})
    assert r.status_code == 422 and r.json()["code"] == "REGISTER_ERROR"
    assert accounts.get_user_by_name(session, "bob") is None


def test_login_returns_seed_fields_and_tokens(client, maker, settings):
    user = make_user(maker, settings, tokens=42, pic_times=3)
    body = client.post("/auth/login", json={"username": user.username, "password": PASSWORD}).json()
    assert body["code"] == 0 and body["uuid"] == user.id and body["username"] == user.username
    assert (body["tokens"], body["picTimes"]) == (42, 3)
    claims = security.decode_token(settings, body["access_token"], role="user", kind="access")
    assert claims["sub"] == user.id


def test_login_wrong_password_and_unknown_user(client, maker, settings):
    user = make_user(maker, settings)
    for name in (user.username, "nobody"):
        r = client.post("/auth/login", json={"username": name, "password": "wrong-pass"})
        assert r.status_code == 401 and r.json()["code"] == "LOGIN_ERROR"


def test_disabled_user_cannot_login(client, maker, settings, session):
    user = make_user(maker, settings)
    with maker.begin() as s:
        s.get(User, user.id).status = "disabled"
    r = client.post("/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 403 and r.json()["code"] == "LOGIN_ERROR"


def test_legacy_md5_hash_is_accepted_once_and_rehashed(client, maker, settings):
    user = make_user(maker, settings)
    with maker.begin() as s:
        s.get(User, user.id).password_hash = security.legacy_md5("old-secret")
    r = client.post("/auth/login", json={"username": user.username, "password": "old-secret"})
    assert r.json()["code"] == 0
    with maker() as s:
        stored = s.get(User, user.id).password_hash
    assert stored.startswith("$2") and security.verify_password("old-secret", stored)


def test_user_and_admin_tokens_are_not_interchangeable(client, maker, settings):
    user = make_user(maker, settings)
    admin = make_admin(maker, settings)
    uh = user_headers(client, user.username)
    ah = admin_headers(client, admin.name)
    r = client.get("/admin/query_table_count", params={"table": "user"}, headers=uh)
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    assert client.get("/auth/me", headers=ah).status_code == 401
    assert client.get("/auth/me", headers=uh).json()["username"] == user.username


def test_refresh_token_is_not_an_access_token(client, maker, settings):
    admin = make_admin(maker, settings)
    tokens = client.post("/admin/login", json={"admin": admin.name, "password": PASSWORD}).json()
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=refresh).status_code == 401
    r = client.get("/admin/refresh", headers=refresh)
    assert r.json()["code"] == 0
    new_access = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=new_access).status_code == 200
    assert client.get("/admin/refresh", headers=access).status_code == 401


def test_admin_login_leaks_no_provider_secret(client, maker, settings):
    admin = make_admin(maker, settings)
    body = client.post("/admin/login", json={"admin": admin.name, "password": PASSWORD}).json()
    assert body["code"] == 0
    assert not {"api_key", "api_secret", "app_id"} & set(body)
    # app_info is there for the original admin app, holding fixed words, no stored secret
    assert body["app_info"] == {"app_id": "meteor", "api_key": "仅保存在服务器上", "api_secret": "仅保存在服务器上"}


def test_user_logout_and_password_change_revoke_earlier_tokens(client, maker, settings):
    user = make_user(maker, settings)
    first = client.post("/auth/login", json={"username": user.username, "password": PASSWORD}).json()
    h1 = {"Authorization": f"Bearer {first['access_token']}"}
    refresh1 = {"Authorization": f"Bearer {first['refresh_token']}"}
    r = client.post("/auth/change_password", json={"old_password": PASSWORD, "new_password": "brand-new-1"}, headers=h1)
    assert r.json()["code"] == 0
    assert client.get("/auth/me", headers=h1).status_code == 401
    assert client.post("/auth/refresh", headers=refresh1).status_code == 401
    h2 = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/auth/me", headers=h2).status_code == 200
    assert client.post("/auth/logout", headers=h2).json()["code"] == 0
    assert client.get("/auth/me", headers=h2).status_code == 401
    assert user_headers(client, user.username, "brand-new-1")


def test_admin_logout_revokes(client, maker, settings):
    admin = make_admin(maker, settings)
    h = admin_headers(client, admin.name)
    assert client.post("/admin/logout", headers=h).json()["code"] == 0
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=h).status_code == 401


def test_expired_and_forged_tokens(client, maker, settings):
    user = make_user(maker, settings)
    expired = security.issue_token(
        settings, subject=user.id, role="user", kind="access", version=0, ttl=timedelta(seconds=-5)
    )
    r = client.get("/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["msg"]
    forged = expired[:-4] + ("AAAA" if not expired.endswith("AAAA") else "BBBB")
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert client.get("/auth/me").status_code == 401


def test_login_limit_per_account(client, maker, settings):
    user = make_user(maker, settings)
    for i in range(settings.login_max_failures_per_account_address):  # distinct: a repeat counts once
        assert client.post("/auth/login", json={"username": user.username, "password": f"bad-{i}"}).status_code == 401
    r = client.post("/auth/login", json={"username": user.username, "password": PASSWORD})
    assert r.status_code == 429 and r.json()["code"] == "LOGIN_ERROR" and "too many" in r.json()["msg"]


def test_login_limit_per_address(client, maker, settings):
    names = [f"ghost{i}" for i in range(settings.login_max_failures_per_address)]
    for name in names:
        assert client.post("/admin/login", json={"admin": name, "password": "bad-bad"}).status_code == 401
    admin = make_admin(maker, settings)
    r = client.post("/admin/login", json={"admin": admin.name, "password": PASSWORD})
    assert r.status_code == 429 and "address" in r.json()["msg"]


def test_success_forgives_account_failures(client, maker, settings):
    user = make_user(maker, settings)
    for i in range(settings.login_max_failures_per_account_address - 1):
        client.post("/auth/login", json={"username": user.username, "password": f"bad-{i}"})
    assert client.post("/auth/login", json={"username": user.username, "password": PASSWORD}).status_code == 200
    for i in range(settings.login_max_failures_per_account_address - 1):
        client.post("/auth/login", json={"username": user.username, "password": f"again-{i}"})
    assert client.post("/auth/login", json={"username": user.username, "password": PASSWORD}).status_code == 200
