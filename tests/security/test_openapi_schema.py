"""Audit finding 16: `/openapi.json` says the truth. Every request body is typed (no `Any`),
the password rule is stated wherever a password is set, each route lists the 4xx it
answers in its family's envelope (and no `{detail}` 422 that never comes), 405 names the
allowed methods, and a limit read from the schema is the limit enforced: a value at it
passes, one past it is refused in the family's envelope with nothing written.
On SQLite, PostgreSQL and MariaDB where rows are involved."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.api.envelope import family
from db.models import ModelConversation, ModelInfo, User
from tests.factories import PASSWORD, make_admin, make_user, super_admin_headers, user_headers
from tests.seed003.helpers import count

ENVELOPES = {"seed000": "Seed000Error", "seed003": "Seed003Error", "openai": "OpenAIError"}
SIGN_IN = {"/auth/login", "/admin/login", "/sys/user/login"}


@pytest.fixture
def spec(client) -> dict:
    return client.get("/openapi.json").json()


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def _body(spec: dict, path: str, method: str = "post") -> dict:
    return _resolve(spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])


def _alternatives(spec: dict, schema: dict) -> list[dict]:
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        return [alt for option in schema["anyOf"] for alt in _alternatives(spec, option)]
    return [schema]


def _properties(spec: dict, schema: dict, prefix: str = "") -> dict[str, dict]:
    """Every property of a body, nested ones as `outer.inner`."""
    found: dict[str, dict] = {}
    for alt in _alternatives(spec, schema):
        for name, prop in alt.get("properties", {}).items():
            found[prefix + name] = prop
            found.update(_properties(spec, prop, f"{prefix}{name}."))
    return found


def _operations(spec: dict):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_no_json_body_is_untyped(spec):
    for path, method, operation in _operations(spec):
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            continue
        for alt in _alternatives(spec, content["application/json"]["schema"]):
            assert alt.get("type") == "object" and alt.get("properties"), f"{method} {path}: {alt}"


def test_every_password_that_is_set_states_the_rule(spec):
    checked = set()
    for path, _method, operation in _operations(spec):
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            continue
        for name, prop in _properties(spec, content["schema"]).items():
            leaf = name.rsplit(".", 1)[-1].lower()
            if "password" not in leaf or "again" in leaf:
                continue
            strings = [a for a in _alternatives(spec, prop) if a.get("type") == "string" and "const" not in a]
            if path in SIGN_IN or leaf == "old_password":  # a sign-in tries what imported accounts have
                assert all(s["minLength"] == 1 for s in strings), (path, name)
                continue
            assert strings and all((s["minLength"], s["maxLength"]) == (6, 72) for s in strings), (path, name, prop)
            keep = [a for a in _alternatives(spec, prop) if "const" in a]
            assert all(a["const"] == "" for a in keep), (path, name)  # "" keeps the password (admin edits)
            checked.add((path, name))
    assert checked >= {
        ("/auth/register", "password"),
        ("/auth/change_password", "new_password"),
        ("/admin/add_normal_user", "password"),
        ("/admin/modify_normal_user", "new_user_info.new_password"),
        ("/admin/add_admin", "password"),
        ("/admin/modify_admin", "new_password"),
        ("/sys/user/create", "password"),
    }


def test_each_route_documents_its_4xx_in_its_familys_envelope(spec):
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        fam = family(path)
        assert "405" in responses and "Allow" in responses["405"]["headers"], f"{method} {path}"
        if fam == "seed003":
            assert "422" not in responses, f"{method} {path}: seed 003 answers bad input with 400"
        for status, response in responses.items():
            if not status.startswith("4") or "content" not in response:
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + ENVELOPES[fam]), f"{method} {path} {status}: {ref}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's {detail}: never answered
    paths = spec["paths"]
    assert {"400", "401", "403", "404", "409"} <= set(paths["/model/manage"]["post"]["responses"])
    assert {"400", "401", "402", "404", "422", "429"} <= set(paths["/v1/chat/completions"]["post"]["responses"])
    assert {"401", "402", "429"} <= set(paths["/textModel/chat"]["post"]["responses"])
    assert {"401", "403"} <= set(paths["/admin/allowances"]["post"]["responses"])


def test_405_names_the_allowed_methods_in_every_family(client):
    for method, path, body_code in (
        ("delete", "/sys/user/login", 405),
        ("patch", "/model/message", 405),
        ("get", "/v1/chat/completions", None),
        ("put", "/auth/login", "APP_QUERY_METHOD_ERROR"),
    ):
        r = client.request(method.upper(), path)
        assert r.status_code == 405 and r.headers["allow"] == "POST", (path, r.headers)
        if family(path) == "openai":
            assert r.json()["error"]["message"]
        else:
            assert r.json()["code"] == body_code


# --- the documented limit is the enforced one ----------------------------------------------


def _limit(spec: dict, path: str, field: str, key: str, method: str = "post") -> int:
    prop = _properties(spec, spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])[field]
    values = [a[key] for a in _alternatives(spec, prop) if key in a]
    assert len(set(values)) == 1, (path, field, values)
    return values[0]


def _seed003_refused(response) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400 and body["data"] is None and "invalid request" in body["message"], body


def test_model_and_conversation_text_limits_from_the_schema(client, spec, maker, settings):
    make_user(maker, settings, username="limits")
    headers = user_headers(client, "limits")
    name_max = _limit(spec, "/model/manage", "modelName", "maxLength")
    desc_max = _limit(spec, "/model/manage", "description", "maxLength")
    assert (name_max, desc_max) == (50, 500)
    over = {"modelName": "m" * (name_max + 1), "aiName": "base"}
    _seed003_refused(client.post("/model/manage", json=over, headers=headers))
    _seed003_refused(
        client.post("/model/manage", json={"modelName": "d", "aiName": "b", "description": "x" * 501}, headers=headers)
    )
    assert count(maker, ModelInfo) == 0
    at = {"modelName": "m" * name_max, "aiName": "base", "description": "x" * desc_max}
    assert client.post("/model/manage", json=at, headers=headers).json()["code"] == 200
    assert count(maker, ModelInfo) == 1

    title_max = _limit(spec, "/model/conversation", "title", "maxLength")
    _seed003_refused(client.post("/model/conversation", json={"title": "t" * (title_max + 1)}, headers=headers))
    assert count(maker, ModelConversation) == 0
    assert client.post("/model/conversation", json={"title": "t" * title_max}, headers=headers).json()["code"] == 200


def test_page_number_limit_from_the_schema(client, spec, maker, settings):
    make_user(maker, settings, username="pager")
    headers = user_headers(client, "pager")
    param = next(p for p in spec["paths"]["/model/manage"]["get"]["parameters"] if p["name"] == "pageNum")
    top = next(a["maximum"] for a in _alternatives(spec, param["schema"]) if "maximum" in a)
    r = client.get("/model/manage", params={"pageNum": top}, headers=headers)
    assert r.status_code == 200 and r.json()["data"]["items"] == []
    _seed003_refused(client.get("/model/manage", params={"pageNum": top + 1}, headers=headers))
    _seed003_refused(client.get("/model/manage", params={"pageNum": 0}, headers=headers))


def test_strangeloop_sign_up_password_rule_from_the_schema(client, spec, maker):
    shortest = _limit(spec, "/sys/user/create", "password", "minLength")
    r = client.post("/sys/user/create", json={"account": "sl-short", "password": "p" * (shortest - 1)})
    body = r.json()  # the sign-up answers its errors with HTTP 200, the status in `code`
    assert r.status_code == 200 and body["code"] == 400 and body["data"] is None and "password" in body["message"]
    assert count(maker, User, User.username == "sl-short") == 0
    r = client.post("/sys/user/create", json={"account": "sl-short", "password": "p" * shortest})
    assert r.json() == {"code": 200, "message": "Success", "data": None}


def test_admin_reset_password_rule_from_the_schema(client, spec, maker, settings):
    user = make_user(maker, settings, username="resettable")
    admin = super_admin_headers(client, maker, settings)
    shortest = _limit(spec, "/admin/modify_normal_user", "new_user_info.new_password", "minLength")

    def reset(password: str):
        body = {"target_user": user.username, "new_user_info": {"new_password": password}}
        return client.post("/admin/modify_normal_user", json=body, headers=admin)

    def stored() -> str:
        with maker() as s:
            return s.scalar(select(User.password_hash).where(User.id == user.id))

    before = stored()
    r = reset("p" * (shortest - 1))
    assert r.status_code == 422 and r.json()["code"] == "MODIFY_USER_ERROR"
    assert reset("").json()["code"] == 0 and stored() == before  # "" keeps the password
    assert reset("p" * shortest).json()["code"] == 0 and stored() != before
    assert client.post("/auth/login", json={"username": "resettable", "password": PASSWORD}).status_code == 401


def test_connection_timeout_limit_from_the_schema(client, spec, maker, settings):
    admin = super_admin_headers(client, maker, settings)
    top = _limit(spec, "/model/ol/manage", "timeout", "maximum")
    body = {"aiName": "campus", "aiApi": "http://127.0.0.1:9/v1", "protocol": "openai"}
    _seed003_refused(client.post("/model/ol/manage", json={**body, "timeout": top + 1}, headers=admin))
    r = client.post("/model/ol/manage", json={**body, "timeout": top}, headers=admin)
    assert r.json()["code"] == 200 and r.json()["data"]["timeout"] == top, r.text


def _documented_keys(spec: dict, path: str, method: str = "post") -> set[str]:
    schema = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    return set(_resolve(spec, schema)["properties"])


def test_documented_answers_are_the_answers_sent(client, spec, maker, settings):
    """The fixed success shapes in the schema have exactly the keys the routes send."""
    make_user(maker, settings, username="shapes")
    login = client.post("/auth/login", json={"username": "shapes", "password": PASSWORD}).json()
    assert set(login) == _documented_keys(spec, "/auth/login")
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    assert set(client.get("/auth/me", headers=headers).json()) == _documented_keys(spec, "/auth/me", "get")
    now = client.post("/sys/user/nowLoginUser", headers=headers).json()
    assert set(now) == _documented_keys(spec, "/sys/user/nowLoginUser")
    data = _resolve(
        spec,
        _properties(
            spec,
            spec["paths"]["/sys/user/nowLoginUser"]["post"]["responses"]["200"]["content"]["application/json"][
                "schema"
            ],
        )["data"],
    )
    assert set(now["data"]) == set(data["properties"])
    sign_in = client.post("/sys/user/login", json={"account": "shapes", "password": PASSWORD}).json()
    wrong = client.post("/sys/user/login", json={"account": "shapes", "password": "wrong-pass-1"}).json()
    assert set(sign_in) == set(wrong) == _documented_keys(spec, "/sys/user/login") and wrong["code"] == 401
    make_admin(maker, settings, name="shape-admin")
    answer = client.post("/admin/login", json={"admin": "shape-admin", "password": PASSWORD}).json()
    assert set(answer) == _documented_keys(spec, "/admin/login")
