"""Bad input never crashes: the seed envelope with a clear message, the right status, nothing written."""

import pytest
from sqlalchemy import func, select

from db.models import AuditLog, User, Voucher
from tests.factories import admin_headers, make_admin


@pytest.fixture
def admin_h(client, maker, settings):
    return admin_headers(client, make_admin(maker, settings, is_super=True).name)


def row_counts(maker) -> tuple[int, int, int]:
    with maker() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (User, Voucher, AuditLog))


CASES = [
    ("/auth/register", {}, "REGISTER_ERROR"),
    ("/auth/register", {"username": 123, "password": "pw123456"}, "REGISTER_ERROR"),
    ("/auth/register", {"username": "x" * 65, "password": "pw123456"}, "REGISTER_ERROR"),
    ("/auth/register", {"username": "ok", "password": "p" * 129}, "REGISTER_ERROR"),
    ("/auth/register", {"username": "a\x00b", "password": "pw123456"}, "REGISTER_ERROR"),
    ("/auth/register", [1, 2, 3], "REGISTER_ERROR"),
    ("/auth/login", {"username": ["x"], "password": "pw"}, "LOGIN_ERROR"),
    ("/admin/login", {"admin": None, "password": "pw"}, "LOGIN_ERROR"),
    ("/admin/add_normal_user", {"username": "u1", "password": "pw123456", "tokens": "many"}, "ADD_USER_ERROR"),
    ("/admin/add_normal_user", {"username": "u1", "password": "pw123456", "tokens": 1.5}, "ADD_USER_ERROR"),
    ("/admin/add_normal_user", {"username": "u1", "password": "pw123456", "tokens": 10**20}, "ADD_USER_ERROR"),
    ("/admin/add_normal_user", {"username": "u1", "password": "pw123456", "academy": "a" * 65}, "ADD_USER_ERROR"),
    ("/admin/modify_normal_user", {"target_user": "x"}, "MODIFY_USER_ERROR"),
    ("/admin/modify_normal_user", {"target_user": "x", "new_user_info": "all"}, "MODIFY_USER_ERROR"),
    ("/admin/delete_normal_user", {"target_username": ""}, "DELETE_USER_ERROR"),
    ("/admin/add_admin", {"admin": "root"}, "ADD_ADMIN_ERROR"),
    ("/admin/modify_admin", {}, "MODIFY_ADMIN_ERROR"),
    ("/admin/delete_admin", {"target_admin": 7}, "DELETE_ADMIN_ERROR"),
    ("/admin/add_token", {"token_name": "t", "token_limit": [1, 2]}, "ADD_TOKEN_ERROR"),
    ("/admin/add_token", {"token_name": "t", "token_limit": {"tokens": "x"}}, "ADD_TOKEN_ERROR"),
    ("/admin/add_token", {"token_name": "t", "max_redemptions": 0}, "ADD_TOKEN_ERROR"),
    ("/admin/modify_token", {"new_token_limit": {}}, "MODIFY_TOKEN_ERROR"),
    ("/admin/delete_token", {"target_token": None}, "DELETE_TOKEN_ERROR"),
    ("/user/get_token", {"token_id": {"$ne": 1}}, "USER_GET_TOKEN_ERROR"),
]


@pytest.mark.parametrize("path,body,code", CASES)
def test_bad_bodies_get_the_endpoints_error_code(client, admin_h, maker, path, body, code):
    before = row_counts(maker)
    r = client.post(path, json=body, headers=admin_h)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code and len(r.json()["msg"]) > 10
    assert row_counts(maker) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b'{"username": "a", "password": '])
def test_garbage_json(client, admin_h, maker, raw):
    before = row_counts(maker)
    r = client.post("/admin/add_normal_user", content=raw, headers={**admin_h, "Content-Type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["code"] == "ADD_USER_ERROR" and r.json()["msg"]
    assert row_counts(maker) == before


@pytest.mark.parametrize("name", ["x'; DROP TABLE users; --", 'a" OR "1"="1', "%_%", "\\'"])
def test_sql_metacharacters_are_plain_data(client, admin_h, maker, name):
    r = client.post("/admin/add_normal_user", json={"username": name, "password": "pw123456"}, headers=admin_h)
    assert r.json()["code"] == 0
    r = client.get("/admin/query_table_data", params={"table": "user", "target_name": name}, headers=admin_h)
    assert r.json()["data"]["username"] == name
    r = client.get("/admin/query_table_data", params={"table": "user", "target_name": "%"}, headers=admin_h)
    assert r.status_code == 404
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=admin_h).json()["total_count"] == 1


def test_unknown_path_and_wrong_method_use_the_envelope(client):
    r = client.get("/no/such/thing")
    assert r.status_code == 404 and r.json()["code"] == "APP_NOT_FOUND_ERROR"
    r = client.get("/auth/register")
    assert r.status_code == 405 and r.json()["code"] == "APP_QUERY_METHOD_ERROR"


def test_bearer_garbage(client):
    for header in ("Bearer", "Bearer ", "Basic abc", "Bearer not.a.jwt", "Bearer " + "a" * 5000):
        r = client.get("/admin/query_table_count", params={"table": "user"}, headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}
