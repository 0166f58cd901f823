from tests.factories import admin_headers, make_admin, make_user, user_headers


def test_register_login_and_admin_flow(client, maker, settings):
    r = client.post("/auth/register", json={"username": "alice", "password": "secret12", "academy": "CS"})
    assert r.json() == {"code": 0, "msg": "用户注册成功"}
    r = client.post("/auth/login", json={"username": "alice", "password": "secret12"})
    body = r.json()
    assert body["code"] == 0 and body["tokens"] == 0 and len(body["uuid"]) == 32
    admin = make_admin(maker, settings, is_super=True)
    h = admin_headers(client, admin.name)
    r = client.get("/admin/query_table", params={"table": "user", "query_range": 5, "start": 0}, headers=h)
    assert r.json()["data"][0]["username"] == "alice"
    assert "password_hash" not in r.text
    u = make_user(maker, settings, tokens=5)
    assert user_headers(client, u.username)
