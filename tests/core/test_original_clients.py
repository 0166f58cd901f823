"""How seed-000 errors reach the two original AiProject clients (see backend/api/envelope.py:
original_client): HTTP 200 with the string code, as the original backend answered, to the
desktop client (legacy mode, no Authorization header) and to the Vue admin app (a browser
calling /admin/...); the fitting status to every other caller. And the desktop client's
voucher redeem, which names the user by `user_id` alone."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend import bootstrap
from backend.api.auth import APP_INFO
from backend.billing import quota, vouchers
from backend.server import create_app
from db.models import Admin, QuotaLedger, Redemption, User
from tests.factories import PASSWORD, make_admin, make_settings, make_user, user_headers


def legacy_client(db_url, tmp_path, **overrides) -> TestClient:
    settings = make_settings(db_url, tmp_path, legacy_uuid_auth=True, **overrides)
    return TestClient(create_app(settings, playground=False))


def make_voucher(maker, **kw) -> str:
    values = dict(name="v", tokens=100, pic_times=5, academy="CS", actor="test")
    values.update(kw)
    with maker.begin() as s:
        return vouchers.create_voucher(s, **values).id


def default_model(maker) -> None:
    with maker.begin() as s:
        bootstrap.ensure_default_model(s)


def user_count(maker) -> int:
    with maker() as s:
        return s.scalar(select(func.count()).select_from(User))


def test_desktop_client_gets_200_and_the_code_for_domain_errors(db_url, tmp_path, maker, settings):
    make_user(maker, settings, username="taken")
    with legacy_client(db_url, tmp_path) as c:
        r = c.post("/auth/register", json={"username": "taken", "password": "another-pass", "email": "", "academy": ""})
        assert r.status_code == 200 and r.json()["code"] == "USER_NAME_REPEAT"
        assert r.headers["X-Meteor-Status"] == "409"
        r = c.post("/auth/login", json={"username": "taken", "password": "wrong-password"})
        assert r.status_code == 200 and r.json()["code"] == "LOGIN_ERROR" and r.json()["msg"]
        assert r.headers["X-Meteor-Status"] == "401" and "WWW-Authenticate" not in r.headers
        r = c.post("/auth/register", json={"username": "", "password": "x"})  # bad input, as the client may send
        assert r.status_code == 200 and r.json()["code"] == "REGISTER_ERROR"
        assert r.headers["X-Meteor-Status"] == "422"
        r = c.post("/auth/login", json={"username": "taken", "password": PASSWORD})
        assert r.status_code == 200 and r.json()["code"] == 0 and "X-Meteor-Status" not in r.headers
    assert user_count(maker) == 1


def test_the_desktop_clients_model_paths_answer_200_with_the_code(db_url, tmp_path, maker, settings):
    user = make_user(maker, settings)  # no tokens, no picTimes
    default_model(maker)
    with legacy_client(db_url, tmp_path) as c:
        body = {"uuid": user.id, "username": user.username, "dialog": [{"role": "user", "content": "hi"}]}
        r = c.post("/textModel/stream", json=body)
        assert r.status_code == 200 and r.json()["code"] == "TOKEN_NOT_ENOUGH"
        assert r.headers["X-Meteor-Status"] == "402"
        r = c.post("/textModel/stream", json={**body, "username": "someone-else"})
        assert r.status_code == 200 and r.json()["code"] == "USER_NOT_FOUND"
        headers = {"uuid": user.id, "username": user.username}
        r = c.post("/PictureToTextModel/chat", headers=headers, files={"file": ("a.png", b"\x89PNG not really")})
        assert r.status_code == 200 and r.json()["code"] in {"PIC_TIMES_NOT_ENOUGH", "FILE_FORMAT_ILLEGAL"}
        r = c.post("/voiceModel/chat", headers=headers, files={"file": ("a.mp3", b"ID3")})
        assert r.status_code == 200 and r.json()["code"] == "FILE_FORMAT_ILLEGAL"
        assert r.headers["X-Meteor-Status"] == "400"
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(0, 0)


def test_bearer_callers_keep_the_fitting_statuses_even_in_legacy_mode(db_url, tmp_path, maker, settings):
    user = make_user(maker, settings)
    default_model(maker)
    with legacy_client(db_url, tmp_path) as c:
        headers = user_headers(c, user.username)
        body = {"dialog": [{"role": "user", "content": "hi"}]}
        r = c.post("/textModel/stream", json=body, headers=headers)
        assert r.status_code == 402 and r.json()["code"] == "TOKEN_NOT_ENOUGH"
        r = c.post("/textModel/stream", json=body, headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
        r = c.get("/model/conversation/list")  # seed-003 paths are never rewritten
        assert r.status_code == 401


def test_without_legacy_mode_statuses_are_the_fitting_ones(client, maker, settings):
    make_user(maker, settings, username="taken")
    r = client.post("/auth/register", json={"username": "taken", "password": "another-pass"})
    assert r.status_code == 409 and r.json()["code"] == "USER_NAME_REPEAT"
    r = client.post("/auth/login", json={"username": "taken", "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["code"] == "LOGIN_ERROR"


def test_the_setting_forces_either_way(db_url, tmp_path, maker, settings):
    make_user(maker, settings, username="taken")
    body = {"username": "taken", "password": "another-pass"}
    with legacy_client(db_url, tmp_path, seed000_error_status="http") as c:
        assert c.post("/auth/register", json=body).status_code == 409
    always = make_settings(db_url, tmp_path, seed000_error_status="200")
    with TestClient(create_app(always, playground=False)) as c:
        r = c.post("/auth/register", json=body)
        assert r.status_code == 200 and r.json()["code"] == "USER_NAME_REPEAT"
        r = c.post("/admin/add_admin", json={"admin": "x", "password": "y"}, headers={"Authorization": "Bearer bad"})
        assert r.status_code == 200 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
        assert c.get("/no/such/endpoint").status_code == 404  # an unknown path is no domain error


def test_the_admin_app_sees_a_revoked_token_as_a_message(client, maker, settings):
    """Password change revokes the page's token; the rename after it is refused, in a 200
    the page shows (`data.msg`), and nothing is renamed."""
    make_admin(maker, settings, name="boss", is_super=True)
    origin = {"Origin": "http://127.0.0.1:8080"}
    r = client.post("/admin/login", json={"admin": "boss", "password": PASSWORD}, headers=origin)
    assert r.json()["app_info"] == APP_INFO and set(APP_INFO) == {"app_id", "api_key", "api_secret"}
    token = r.json()["access_token"]
    auth = {**origin, "Authorization": f"Bearer {token}"}
    r = client.post("/admin/modify_admin", json={"target_admin": "boss", "new_password": "new-pass-123"}, headers=auth)
    assert r.status_code == 200 and r.json()["code"] == 0
    r = client.post("/admin/modify_admin", json={"target_admin": "boss", "new_name": "chief"}, headers=auth)
    assert r.status_code == 200 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    assert "请重新登录" in r.json()["msg"] and r.headers["X-Meteor-Status"] == "401"
    without_origin = {"Authorization": f"Bearer {token}"}
    r = client.post("/admin/modify_admin", json={"target_admin": "boss", "new_name": "chief"}, headers=without_origin)
    assert r.status_code == 401
    r = client.post("/admin/login", json={"admin": "boss", "password": PASSWORD}, headers=origin)
    assert r.status_code == 200 and r.json()["code"] == "LOGIN_ERROR"
    with maker() as s:
        assert s.scalar(select(Admin.name)) == "boss"


def test_desktop_redeem_names_the_user_by_user_id_alone(db_url, tmp_path, client, maker, settings):
    user = make_user(maker, settings, academy="CS")
    code = make_voucher(maker, tokens=100, pic_times=5)
    body = {"token_id": code, "user_id": user.id, "user_academy": "CS"}  # exactly what the client sends
    assert client.post("/user/get_token", json=body).status_code == 401  # legacy mode off
    with legacy_client(db_url, tmp_path) as c:
        r = c.post("/user/get_token", json={**body, "user_id": "0" * 32})
        assert r.status_code == 200 and r.json()["code"] == "USER_NOT_FOUND"
        r = c.post("/user/get_token", json=body)
        assert r.status_code == 200 and r.json()["code"] == 0 and r.json()["msg"] == "兑换令牌成功"
        r = c.post("/user/get_token", json=body)  # the client retries nothing on 200; a second click:
        assert r.status_code == 200 and r.json()["code"] == "TOKEN_ALREADY_GET"
        r = c.post("/user/get_token", json={**body, "user_academy": "EE"})
        assert r.status_code == 200 and r.json()["code"] in {"PERMISSION_NOT_ALLOW", "TOKEN_ALREADY_GET"}
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(100, 5) == quota.ledger_sum(s, user.id)
        assert s.scalar(select(func.count()).select_from(Redemption)) == 1
        kinds = s.scalars(select(QuotaLedger.kind).where(QuotaLedger.user_id == user.id)).all()
        assert kinds == ["redeem"]


def test_app_info_holds_no_provider_secret(client, maker, settings):
    """The original answered its iFlytek credentials in app_info; Meteor answers the three
    fields the admin app reads, none of them a stored secret."""
    from tests.media.helpers import add_connection

    add_connection(
        maker,
        settings,
        name="xf",
        protocol="iflytek-iat",
        url="wss://ws-api.xfyun.cn/v2/iat",
        secret="appid123:key-abcdef123456:secret-abcdef123456",
    )
    make_admin(maker, settings, name="boss", is_super=True)
    r = client.post("/admin/login", json={"admin": "boss", "password": PASSWORD})
    info = r.json()["app_info"]
    assert set(info) == {"app_id", "api_key", "api_secret"}
    assert not any(part in r.text for part in ("appid123", "key-abcdef123456", "secret-abcdef123456"))
