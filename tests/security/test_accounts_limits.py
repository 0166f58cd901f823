"""Audit findings 13, 14 (the 5xx on account, admin and list routes) and 16: request bodies
are capped per route family while they stream in; out-of-range numbers and absurdly nested
JSON are 4xx in the family's envelope; the schema states the limits the server enforces."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from backend.server import create_app
from tests.factories import make_settings, make_user, super_admin_headers, user_headers
from tests.live import live_server

# --- finding 13 --------------------------------------------------------------------------


def _big_login(size: int) -> bytes:
    return json.dumps({"username": "x", "password": "y" * size}).encode()


def test_declared_oversized_bodies_are_413_in_each_familys_envelope(client, settings):
    r = client.post(
        "/auth/login", content=_big_login(settings.body_max_bytes + 10), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["code"] == "LOGIN_ERROR" and "limit" in r.json()["msg"]
    r = client.post("/admin/add_normal_user", content=b"{" + b" " * settings.body_max_bytes + b"}")
    assert r.status_code == 413 and r.json()["code"] == "ADD_USER_ERROR"
    chat = b'{"messages": [{"role": "user", "content": "' + b"a" * settings.chat_body_max_bytes + b'"}]}'
    r = client.post("/v1/chat/completions", content=chat, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/model/conversation", content=chat, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == 413 and r.json()["data"] is None
    # under the cap: the route answers as usual (not signed in / not a full request), not 413
    small_chat = b'{"messages": [{"role": "user", "content": "' + b"a" * 200_000 + b'"}]}'
    r = client.post("/v1/chat/completions", content=small_chat, headers={"Content-Type": "application/json"})
    assert r.status_code in (401, 422) and "limit" not in r.text
    assert client.post("/auth/login", json={"username": "x", "password": "wrong-pass"}).status_code == 401


def test_chunked_bodies_are_counted_as_they_arrive(client, settings):
    def chunks():
        yield b'{"username": "x", "password": "'
        for _ in range(20):
            yield b"p" * 8192
        yield b'"}'

    r = client.post("/auth/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "LOGIN_ERROR"


@pytest.mark.committed  # a live server
def test_a_chunked_body_is_refused_before_it_is_all_sent(db_url, tmp_path):
    """On a real server: the 413 arrives while the client still holds most of its body."""
    settings = make_settings(db_url, tmp_path)
    with live_server(create_app(settings, playground=False), settings) as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
            sock.sendall(
                b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"a" * 16384
            sent = 0
            while sent <= settings.body_max_bytes + len(chunk):  # a little past the cap, of a 100 MB body
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_uploads_keep_their_own_limit(client, settings):
    # a 200 kB upload is over the JSON cap but far under METEOR_UPLOAD_MAX_BYTES: not a 413
    r = client.post("/voiceModel/chat", content=b"\0" * 200_000, headers={"Content-Type": "audio/wav"})
    assert r.status_code != 413


# --- finding 14 --------------------------------------------------------------------------

DEEP = b"[" * 50_000 + b"]" * 50_000


def test_deeply_nested_json_on_get_with_body_is_400(client, maker, settings):
    make_user(maker, settings, username="nest")
    headers = user_headers(client, "nest")
    for path in ("/model/conversation/list", "/model/message/list", "/model/manage", "/model/ol/manage"):
        r = client.request("GET", path, content=DEEP[:60_000], headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == 400 and r.json()["data"] is None, (path, r.text)


def test_deeply_nested_json_on_post_is_4xx(client):
    r = client.post("/auth/login", content=DEEP[:60_000], headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["code"] == "LOGIN_ERROR"


def test_numbers_too_big_for_the_columns_are_4xx(client, maker, settings):
    admin = super_admin_headers(client, maker, settings)
    big = 10**20
    r = client.get("/admin/query_table", params={"table": "user", "start": big}, headers=admin)
    assert r.status_code == 422 and r.json()["code"] == "QUERY_TABLE_ERROR"
    r = client.get("/admin/query_table", params={"table": "user", "query_range": big}, headers=admin)
    assert r.status_code == 422
    r = client.post(f"/admin/api_keys/{big}/revoke", headers=admin)
    assert r.status_code == 422 and r.json()["code"] == "APP_QUERY_METHOD_ERROR"
    make_user(maker, settings, username="numbers")
    user = user_headers(client, "numbers")
    assert client.post(f"/user/api_keys/{big}/revoke", headers=user).status_code == 422
    for params in ({"aiId": big}, {"aiType": big}, {"aiType": -big}):
        r = client.get("/model/ol/manage", params=params, headers=admin)
        assert r.status_code == 400 and r.json()["code"] == 400, (params, r.text)
    body = {"aiId": big, "createdTimeStart": "2020-01-01 00:00:00"}
    r = client.put("/model/ol/manage", json=body, headers=admin)
    assert r.status_code == 400 and r.json()["code"] == 400
    # in range, the same routes answer normally
    assert (
        client.get("/admin/query_table", params={"table": "user", "start": 2**31 - 1}, headers=admin).status_code == 200
    )
    assert client.get("/model/ol/manage", params={"aiType": 2**31 - 1}, headers=admin).status_code == 200


def test_an_overflow_past_every_schema_is_still_a_4xx(client, maker, settings):
    """The safety net: a value the database cannot hold is bad input in any route."""
    make_user(maker, settings, username="overflow")
    headers = user_headers(client, "overflow")
    r = client.get(f"/model/conversation/{10**20}", headers=headers)
    assert 400 <= r.status_code < 500 and r.json()["data"] is None


# --- finding 16 --------------------------------------------------------------------------


def _schema_of(spec: dict, path: str, method: str = "post") -> dict:
    ref = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_openapi_states_the_password_rules_the_service_enforces(client):
    spec = client.get("/openapi.json").json()
    for path, field in (
        ("/auth/register", "password"),
        ("/admin/add_normal_user", "password"),
        ("/admin/add_admin", "password"),
        ("/auth/change_password", "new_password"),
    ):
        prop = _schema_of(spec, path)["properties"][field]
        assert (prop["minLength"], prop["maxLength"]) == (6, 72), path
    login = spec["paths"]["/auth/login"]["post"]["responses"]
    assert {"200", "401", "403", "413", "422", "429"} <= set(login)
    assert {"401", "403", "404", "409", "422"} <= set(spec["paths"]["/admin/add_normal_user"]["post"]["responses"])


def test_a_five_character_password_is_refused_by_the_schema(client):
    r = client.post("/auth/register", json={"username": "short", "password": "12345"})
    assert r.status_code == 422 and r.json()["code"] == "REGISTER_ERROR" and "password" in r.json()["msg"]
    assert client.post("/auth/register", json={"username": "short", "password": "123456"}).json()["code"] == 0


def test_405_names_the_allowed_methods(client):
    r = client.get("/auth/login")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["code"] == "APP_QUERY_METHOD_ERROR"
    r = client.delete("/admin/add_admin")
    assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_login_of_an_account_with_a_short_legacy_password_still_works(client, maker, settings):
    """Sign-in keeps accepting what imported accounts have (the rule is for new passwords)."""
    from backend import security
    from db.models import User

    user = make_user(maker, settings)
    with maker.begin() as s:
        s.get(User, user.id).password_hash = security.legacy_md5("abc")
    assert client.post("/auth/login", json={"username": user.username, "password": "abc"}).json()["code"] == 0
