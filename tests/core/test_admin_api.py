"""Seed-000 back office endpoints: success and every error code each can return."""

import json

import pytest
from sqlalchemy import func, select

from backend.billing import quota
from db.models import Admin, AuditLog, QuotaLedger, User, Voucher
from tests.factories import PASSWORD, admin_headers, make_admin, make_user, super_admin_headers


@pytest.fixture
def admin_h(client, maker, settings):
    return admin_headers(client, make_admin(maker, settings).name)


@pytest.fixture
def super_h(client, maker, settings):
    return super_admin_headers(client, maker, settings)


def audit_actions(maker) -> list[str]:
    with maker() as s:
        return list(s.scalars(select(AuditLog.action).order_by(AuditLog.id)))


# --- users ---------------------------------------------------------------------------------


def test_add_normal_user_grants_through_ledger(client, admin_h, maker):
    body = {
        "username": "carol",
        "password": "pw123456",
        "tokens": 100,
        "email": "c@x.cn",
        "pictimes": 4,
        "academy": "Math",
    }
    r = client.post("/admin/add_normal_user", json=body, headers=admin_h)
    assert r.json()["code"] == 0 and r.json()["msg"] == "添加用户成功"
    with maker() as s:
        user = s.scalar(select(User).where(User.username == "carol"))
        assert (user.tokens, user.pic_times, user.academy) == (100, 4, "Math")
        assert quota.ledger_sum(s, user.id) == quota.balance(s, user.id)
    assert "add_user" in audit_actions(maker)


def test_add_normal_user_errors(client, admin_h, maker, settings):
    make_user(maker, settings, username="dave")
    r = client.post("/admin/add_normal_user", json={"username": "dave", "password": "pw123456"}, headers=admin_h)
    assert r.status_code == 409 and r.json()["code"] == "USER_NAME_REPEAT"
    r = client.post(
        "/admin/add_normal_user", json={"username": "eve", "password": "pw123456", "tokens": -1}, headers=admin_h
    )
    assert r.status_code == 422 and r.json()["code"] == "ADD_USER_ERROR"
    r = client.post("/admin/add_normal_user", json={"username": "eve", "password": "pw123456"})
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"


def test_modify_normal_user_keeps_id_and_writes_ledger(client, admin_h, maker, settings):
    user = make_user(maker, settings, username="frank", tokens=10)
    body = {
        "target_user": "frank",
        "new_user_info": {
            "new_username": "franklin",
            "new_tokens": 75,
            "new_password": "new-pass-1",
            "new_email": "f@x.cn",
            "new_pictimes": 2,
            "new_academy": "Art",
        },
    }
    r = client.post("/admin/modify_normal_user", json=body, headers=admin_h)
    assert r.json() == {"code": 0, "msg": "修改用户信息成功"}
    with maker() as s:
        renamed = s.get(User, user.id)
        assert (renamed.username, renamed.tokens, renamed.pic_times, renamed.academy) == ("franklin", 75, 2, "Art")
        kinds = list(s.scalars(select(QuotaLedger.kind).where(QuotaLedger.user_id == user.id)))
        assert kinds == ["grant", "admin_adjust"]
        assert quota.ledger_sum(s, user.id) == quota.balance(s, user.id)
    assert client.post("/auth/login", json={"username": "franklin", "password": "new-pass-1"}).json()["code"] == 0


def test_modify_normal_user_errors(client, admin_h, maker, settings):
    make_user(maker, settings, username="gina")
    make_user(maker, settings, username="hank")
    r = client.post("/admin/modify_normal_user", json={"target_user": "nobody", "new_user_info": {}}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "USER_NOT_FOUND"
    r = client.post(
        "/admin/modify_normal_user",
        json={"target_user": "gina", "new_user_info": {"new_username": "hank"}},
        headers=admin_h,
    )
    assert r.status_code == 409 and r.json()["code"] == "USER_NAME_REPEAT"
    r = client.post(
        "/admin/modify_normal_user", json={"target_user": "gina", "new_user_info": {"new_tokens": "x"}}, headers=admin_h
    )
    assert r.status_code == 422 and r.json()["code"] == "MODIFY_USER_ERROR"


def test_delete_normal_user(client, admin_h, maker, settings):
    make_user(maker, settings, username="ivan")
    r = client.post("/admin/delete_normal_user", json={"target_username": "ivan"}, headers=admin_h)
    assert r.json() == {"code": 0, "msg": "ivan用户删除成功"}
    r = client.post("/admin/delete_normal_user", json={"target_username": "ivan"}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "USER_NOT_FOUND"
    assert "delete_user" in audit_actions(maker)


# --- admins --------------------------------------------------------------------------------


def test_admin_crud_is_super_only(client, admin_h, super_h, maker):
    r = client.post("/admin/add_admin", json={"admin": "ops", "password": "pw123456"}, headers=admin_h)
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    assert client.post("/admin/add_admin", json={"admin": "ops", "password": "pw123456"}, headers=super_h).json() == {
        "code": 0,
        "msg": "添加管理员成功",
    }
    r = client.post("/admin/add_admin", json={"admin": "ops", "password": "pw123456"}, headers=super_h)
    assert r.status_code == 409 and r.json()["code"] == "USER_NAME_REPEAT"
    r = client.post(
        "/admin/modify_admin",
        json={"target_admin": "ops", "new_name": "ops2", "new_password": "pw654321"},
        headers=super_h,
    )
    assert r.json()["code"] == 0
    assert admin_headers(client, "ops2", "pw654321")
    r = client.post("/admin/modify_admin", json={"target_admin": "ghost", "new_name": "x"}, headers=super_h)
    assert r.status_code == 404 and r.json()["code"] == "MODIFY_ADMIN_ERROR"
    r = client.post("/admin/delete_admin", json={"target_admin": "ops2"}, headers=admin_h)
    assert r.status_code == 403
    assert client.post("/admin/delete_admin", json={"target_admin": "ops2"}, headers=super_h).json()["code"] == 0
    r = client.post("/admin/delete_admin", json={"target_admin": "ops2"}, headers=super_h)
    assert r.status_code == 404 and r.json()["code"] == "DELETE_ADMIN_ERROR"


def test_super_admin_can_never_be_deleted(client, super_h, maker, settings):
    make_admin(maker, settings, name="root2", is_super=True)
    r = client.post("/admin/delete_admin", json={"target_admin": "root2"}, headers=super_h)
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(Admin).where(Admin.is_super.is_(True))) == 2


# --- vouchers ------------------------------------------------------------------------------


def test_add_token_accepts_object_and_string_limits(client, admin_h, maker):
    for name, limit in [
        ("v-obj", {"tokens": 100, "pictimes": 2}),
        ("v-json", json.dumps({"tokens": 7})),
        ("v-num", "50"),
        ("v-empty", {}),
    ]:
        r = client.post(
            "/admin/add_token", json={"token_name": name, "token_limit": limit, "token_range": "CS"}, headers=admin_h
        )
        assert r.json()["code"] == 0 and len(r.json()["token_id"]) == 32
    with maker() as s:
        got = {v.name: (v.tokens, v.pic_times) for v in s.scalars(select(Voucher))}
    assert got == {"v-obj": (100, 2), "v-json": (7, 0), "v-num": (50, 0), "v-empty": (0, 0)}


def test_add_token_errors(client, admin_h):
    body = {"token_name": "dup", "token_limit": {"tokens": 1}, "token_range": "CS"}
    assert client.post("/admin/add_token", json=body, headers=admin_h).json()["code"] == 0
    r = client.post("/admin/add_token", json=body, headers=admin_h)
    assert r.status_code == 409 and r.json()["code"] == "TOKEN_REPEAT"
    r = client.post("/admin/add_token", json={"token_name": "bad", "token_limit": "lots"}, headers=admin_h)
    assert r.status_code == 422 and r.json()["code"] == "ADD_TOKEN_ERROR"
    r = client.post("/admin/add_token", json={"token_name": "neg", "token_limit": {"tokens": -5}}, headers=admin_h)
    assert r.status_code == 422 and r.json()["code"] == "ADD_TOKEN_ERROR"


@pytest.mark.parametrize("shape", ["document", "code"])
def test_modify_token_accepts_both_nestings(client, admin_h, maker, shape):
    client.post(
        "/admin/add_token",
        json={"token_name": "v1", "token_limit": {"tokens": 1}, "token_range": "CS"},
        headers=admin_h,
    )
    if shape == "document":
        body = {
            "target_token": "v1",
            "new_token_limit": {"tokens": 9, "pictimes": 3, "new_token_range": "Art", "new_token_is_available": 0},
        }
    else:
        body = {
            "target_token": "v1",
            "new_token_limit": {"tokens": 9, "pictimes": 3},
            "new_token_range": "Art",
            "new_token_is_available": 0,
        }
    assert client.post("/admin/modify_token", json=body, headers=admin_h).json() == {"code": 0, "msg": "令牌修改成功"}
    with maker() as s:
        v = s.scalar(select(Voucher).where(Voucher.name == "v1"))
        assert (v.tokens, v.pic_times, v.academy, v.available) == (9, 3, "Art", False)


def test_modify_token_unknown_is_404(client, admin_h):
    r = client.post("/admin/modify_token", json={"target_token": "nope", "new_token_limit": {}}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "TOKEN_NOT_FOUND"
    r = client.post("/admin/modify_token", json={"target_token": "nope", "new_token_is_available": 5}, headers=admin_h)
    assert r.status_code == 422 and r.json()["code"] == "MODIFY_TOKEN_ERROR"


def test_control_and_delete_token(client, admin_h, super_h, maker):
    client.post("/admin/add_token", json={"token_name": "v2", "token_limit": {"tokens": 1}}, headers=admin_h)
    r = client.get("/admin/control_token", params={"is_available": 0, "token_name": "v2"}, headers=admin_h)
    assert r.json() == {"code": 0, "msg": "v2 禁用成功"}
    r = client.get("/admin/control_token", params={"is_available": 1, "token_name": "v2"}, headers=admin_h)
    assert r.json() == {"code": 0, "msg": "v2 启用成功"}
    r = client.get("/admin/control_token", params={"is_available": 3, "token_name": "v2"}, headers=admin_h)
    assert r.status_code == 422 and r.json()["code"] == "CONTROL_TOKEN_ERROR"
    r = client.get("/admin/control_token", params={"is_available": 1, "token_name": "zz"}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "TOKEN_NOT_FOUND"
    r = client.post("/admin/delete_token", json={"target_token": "v2"}, headers=admin_h)
    assert r.status_code == 403
    assert client.post("/admin/delete_token", json={"target_token": "v2"}, headers=super_h).json() == {
        "code": 0,
        "msg": "v2 删除成功",
    }
    r = client.post("/admin/delete_token", json={"target_token": "v2"}, headers=super_h)
    assert r.status_code == 404 and r.json()["code"] == "TOKEN_NOT_FOUND"


# --- table queries -------------------------------------------------------------------------


def test_query_table_pages_without_secrets(client, admin_h, maker, settings):
    for i in range(5):
        make_user(maker, settings, username=f"user{i}", tokens=i)
    r = client.get("/admin/query_table", params={"table": "user", "query_range": 2, "start": 2}, headers=admin_h)
    body = r.json()
    assert body["code"] == 0 and [row["username"] for row in body["data"]] == ["user2", "user3"]
    for table in ("user", "admin", "token", "ledger"):
        r = client.get("/admin/query_table", params={"table": table, "query_range": 100}, headers=admin_h)
        assert r.status_code == 200
        text = r.text.lower()
        assert "password" not in text and "$2b$" not in text and "token_version" not in text
    assert client.get("/admin/query_table_count", params={"table": "user"}, headers=admin_h).json()["total_count"] == 5
    r = client.get("/admin/query_table_data", params={"table": "user", "target_name": "user3"}, headers=admin_h)
    assert r.json()["data"]["tokens"] == 3 and "password_hash" not in r.json()["data"]
    r = client.get("/admin/query_table_data", params={"table": "admin", "target_name": "nobody"}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "QUERY_TABLE_DATA_ERROR"


@pytest.mark.parametrize(
    "params,code,status",
    [
        ({"table": "users; DROP TABLE users"}, "TABLE_NOT_FOUND", 404),
        ({"table": "login_attempts"}, "TABLE_NOT_FOUND", 404),
        ({"table": "user", "query_range": -1}, "QUERY_TABLE_ERROR", 422),
        ({"table": "user", "start": -5}, "QUERY_TABLE_ERROR", 422),
        ({"table": "user", "query_range": 101}, "QUERY_TABLE_ERROR", 422),
        ({"table": "user", "query_range": "ten"}, "QUERY_TABLE_ERROR", 422),
    ],
)
def test_query_table_rejects_bad_paging_and_tables(client, admin_h, maker, params, code, status):
    r = client.get("/admin/query_table", params=params, headers=admin_h)
    assert r.status_code == status and r.json()["code"] == code and r.json()["msg"]
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0  # the users table still exists


def test_query_table_count_unknown_table(client, admin_h):
    r = client.get("/admin/query_table_count", params={"table": "secrets"}, headers=admin_h)
    assert r.status_code == 404 and r.json()["code"] == "TABLE_NOT_FOUND"


def test_login_password_is_checked_for_added_user(client, admin_h):
    client.post("/admin/add_normal_user", json={"username": "jo", "password": PASSWORD}, headers=admin_h)
    assert client.post("/auth/login", json={"username": "jo", "password": PASSWORD}).json()["code"] == 0
