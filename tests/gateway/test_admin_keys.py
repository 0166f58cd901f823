"""Admins create, list and revoke any user's API keys; the key is shown once and works on /v1."""

from sqlalchemy import select

from db.models import ApiKey, AuditLog
from tests.factories import admin_headers, make_admin, make_user


def test_admin_creates_lists_and_revokes_a_users_key(client, maker, settings):
    user = make_user(maker, settings, username="kim", tokens=100)
    other = make_user(maker, settings, username="lee")
    h = admin_headers(client, make_admin(maker, settings).name)
    r = client.post("/admin/api_keys", json={"username": "kim", "name": "lab"}, headers=h)
    body = r.json()
    assert r.status_code == 200 and body["code"] == 0 and body["key"].startswith("sk-")
    key_id = body["api_key"]["id"]
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {body['key']}"}).status_code == 200
    client.post("/admin/api_keys", json={"user_id": other.id}, headers=h)

    listed = client.get("/admin/api_keys", params={"username": "kim"}, headers=h).json()["api_keys"]
    assert [k["id"] for k in listed] == [key_id] and body["key"] not in str(listed)
    assert len(client.get("/admin/api_keys", headers=h).json()["api_keys"]) == 2

    assert client.post(f"/admin/api_keys/{key_id}/revoke", headers=h).json()["code"] == 0
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {body['key']}"}).status_code == 401
    with maker() as s:
        row = s.get(ApiKey, key_id)
        assert row.user_id == user.id and row.revoked_at is not None and body["key"] not in row.key_hash
        actions = set(s.scalars(select(AuditLog.action)))
    assert any("key" in a for a in actions)


def test_admin_key_errors(client, maker, settings):
    h = admin_headers(client, make_admin(maker, settings).name)
    r = client.post("/admin/api_keys", json={"username": "ghost"}, headers=h)
    assert r.status_code == 404 and r.json()["code"] == "USER_NOT_FOUND"
    r = client.get("/admin/api_keys", params={"user_id": "0" * 32}, headers=h)
    assert r.status_code == 404
    r = client.post("/admin/api_keys/999999/revoke", headers=h)
    assert r.status_code == 404
    user = make_user(maker, settings)
    login = client.post("/auth/login", json={"username": user.username, "password": "correct-horse-1"}).json()
    r = client.post(
        "/admin/api_keys",
        json={"username": user.username},
        headers={"Authorization": f"Bearer {login['access_token']}"},
    )
    assert r.status_code == 401
    with maker() as s:
        assert s.scalars(select(ApiKey)).all() == []
