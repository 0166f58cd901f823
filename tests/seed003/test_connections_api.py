"""Seed-003 online connections over HTTP: CRUD, masking, uniqueness, the SSRF guard, and
"test connection" against real local servers."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from backend import security
from backend.accounts.viewer import Viewer
from backend.catalog import connections
from backend.server import create_app
from db.models import ModelAiOnline, ModelInfo
from tests.factories import make_settings
from tests.fakes.ollama_server import OllamaServer
from tests.fakes.openai_server import OpenAIServer
from tests.seed003.helpers import count, err, ok

TOKEN = "sk-qxoWrNw4JDPobNAZxkIV11rXP8cFFTtZa4kUbYthQAhxdJJq"
MASKED = "sk-…dJJq"
DOC_CONNECTION = {
    "aiId": "1",
    "aiName": "gpt-3.5-turbo-0125",
    "aiVersion": "gpt-3.5-turbo-0125",
    "aiToken": TOKEN,
    "aiApi": "https://api.bianxie.ai/v1/chat/completions",
    "aiType": "1",
    "timeout": "5000",
}


def create(client, actor, **body) -> dict:
    return ok(client.post("/model/ol/manage", json=body, headers=actor.headers))


def test_document_examples_replayed_and_the_key_never_shown(client, maker, settings, alice):
    # 2.25 create (the aiId "1" is ignored: ids are made by the server)
    r = client.post("/model/ol/manage", json=DOC_CONNECTION, headers=alice.headers)
    created = ok(r)
    ai_id = created["aiId"]
    assert created["aiToken"] == MASKED and TOKEN not in r.text
    assert (created["timeout"], created["timeOut"], created["aiType"], created["protocol"]) == (5000, 5000, 1, "openai")
    with maker() as s:
        row = s.get(ModelAiOnline, ai_id)
        assert (
            TOKEN not in row.ai_token_encrypted and security.decrypt_secret(settings, row.ai_token_encrypted) == TOKEN
        )

    # 2.21 list: GET (the original code) and PUT with the document's filter body
    answers = [client.get("/model/ol/manage", headers=alice.headers)]
    doc_filter = {
        "aiId": str(ai_id),
        "aiName": "gpt-3.5-turbo-0125",
        "aiVersion": "gpt-3.5-turbo-0125",
        "aiType": "1",
        "createdTimeStart": "2024/12/28 16:09",
    }
    answers.append(client.put("/model/ol/manage", json=doc_filter, headers=alice.headers))
    answers.append(client.get("/model/ol/manage", params=doc_filter, headers=alice.headers))
    for answer in answers:
        assert [c["aiId"] for c in ok(answer)] == [ai_id] and TOKEN not in answer.text
        assert ok(answer)[0]["aiToken"] == MASKED

    # 2.22 detail, 2.24 update (trailing slash as in the document)
    r = client.get(f"/model/ol/manage/{ai_id}", headers=alice.headers)
    assert ok(r)["aiToken"] == MASKED and TOKEN not in r.text
    r = client.put(
        "/model/ol/manage/", json=DOC_CONNECTION | {"aiId": str(ai_id), "aiVersion": "v2"}, headers=alice.headers
    )
    assert ok(r)["aiVersion"] == "v2" and TOKEN not in r.text

    # 2.23 delete
    assert ok(client.delete(f"/model/ol/manage/{ai_id}", headers=alice.headers)) is None
    assert count(maker, ModelAiOnline) == 0


def test_token_updates_keep_change_or_clear(client, maker, settings, alice):
    ai_id = create(client, alice, aiName="c", aiApi="https://api.example.com/v1", aiToken=TOKEN)["aiId"]

    def stored():
        with maker() as s:
            return security.decrypt_secret(settings, s.get(ModelAiOnline, ai_id).ai_token_encrypted)

    # the masked value sent back (a form that round-trips what it was shown) keeps the key
    ok(client.put("/model/ol/manage", json={"aiId": ai_id, "aiToken": MASKED, "aiVersion": "x"}, headers=alice.headers))
    assert stored() == TOKEN
    ok(client.put("/model/ol/manage", json={"aiId": ai_id, "aiVersion": "y"}, headers=alice.headers))
    assert stored() == TOKEN
    r = client.put("/model/ol/manage", json={"aiId": ai_id, "aiToken": "sk-brand-new-key-0000"}, headers=alice.headers)
    assert ok(r)["aiToken"] == "sk-…0000" and "brand-new" not in r.text
    assert stored() == "sk-brand-new-key-0000"
    assert (
        ok(client.put("/model/ol/manage", json={"aiId": ai_id, "aiToken": ""}, headers=alice.headers))["aiToken"]
        is None
    )
    assert stored() is None


def test_ai_name_is_unique(client, maker, alice, bob):
    create(client, alice, aiName="gpt-4o", aiApi="https://api.example.com/v1")
    err(
        client.post(
            "/model/ol/manage", json={"aiName": "gpt-4o", "aiApi": "https://b.example/v1"}, headers=bob.headers
        ),
        409,
    )
    other = create(client, bob, aiName="other", aiApi="https://b.example/v1")
    err(client.put("/model/ol/manage", json={"aiId": other["aiId"], "aiName": "gpt-4o"}, headers=bob.headers), 409)
    assert count(maker, ModelAiOnline) == 2


@pytest.mark.parametrize(
    "body, status",
    [
        ({"aiApi": "https://a.example/v1"}, 400),  # no name
        ({"aiName": "x"}, 400),  # no URL
        ({"aiName": "x", "aiApi": "http://169.254.169.254/latest/meta-data"}, 400),
        ({"aiName": "x", "aiApi": "http://10.0.0.5:11434"}, 400),
        ({"aiName": "x", "aiApi": "http://metadata.google.internal/"}, 400),
        ({"aiName": "x", "aiApi": "ftp://a.example/"}, 400),
        ({"aiName": "x", "aiApi": "https://key:sk-secret@a.example/v1"}, 400),
        ({"aiName": "x", "aiApi": "https://a.example/v1", "aiType": 4}, 400),
        ({"aiName": "x", "aiApi": "https://a.example/v1", "timeout": 0}, 400),
        ({"aiName": "x", "aiApi": "https://a.example/v1", "timeout": "soon"}, 400),
        ({"aiName": "x", "aiApi": "https://a.example/v1", "protocol": "carrier-pigeon"}, 400),
        ({"aiName": "x" * 51, "aiApi": "https://a.example/v1"}, 400),
        ({"aiName": "x", "aiApi": "https://a.example/" + "p" * 500}, 400),
    ],
)
def test_bad_connections_are_refused(client, maker, alice, body, status):
    r = client.post("/model/ol/manage", json=body | {"aiToken": TOKEN}, headers=alice.headers)
    err(r, status)
    assert TOKEN not in r.text and "sk-secret" not in r.text
    assert count(maker, ModelAiOnline) == 0


def test_updates_go_through_the_guard_too(client, maker, alice):
    ai_id = create(client, alice, aiName="c", aiApi="https://api.example.com/v1")["aiId"]
    err(
        client.put(
            "/model/ol/manage", json={"aiId": ai_id, "aiApi": "http://[::ffff:169.254.169.254]/"}, headers=alice.headers
        ),
        400,
    )
    assert ok(client.get(f"/model/ol/manage/{ai_id}", headers=alice.headers))["aiApi"] == "https://api.example.com/v1"


def test_private_hosts_need_the_admin_allowlist(db_url, tmp_path, alice, admin):
    for allowed, status in (("", 400), ("10.0.0.5", 200), ("10.0.0.0/8", 200)):
        app = create_app(make_settings(db_url, tmp_path, allowed_private_hosts=allowed), playground=False)
        with TestClient(app) as c:
            body = {"aiName": f"lan{status}{allowed}", "aiApi": "http://10.0.0.5:11434"}
            r = c.post("/model/ol/manage", json=body, headers=admin.headers)
            assert r.status_code == status, r.text
            # private addresses are for admins' connections only, whatever the allowlist says
            body["aiName"] += "-user"
            assert "admin" in err(c.post("/model/ol/manage", json=body, headers=alice.headers), 400)
    app = create_app(make_settings(db_url, tmp_path, allow_loopback=False), playground=False)
    with TestClient(app) as c:
        r = c.post(
            "/model/ol/manage", json={"aiName": "local", "aiApi": "http://localhost:11434"}, headers=admin.headers
        )
        assert "loopback" in err(r, 400)


def test_ownership_and_shared_connections(client, maker, alice, bob, admin):
    mine = create(client, alice, aiName="alice-conn", aiApi="https://a.example/v1", aiToken=TOKEN)
    shared = create(client, admin, aiName="campus-gpt", aiApi="https://gpt.example/v1", aiToken=TOKEN)
    assert (mine["shared"], shared["shared"]) == (False, True)

    names = lambda actor: sorted(c["aiName"] for c in ok(client.get("/model/ol/manage", headers=actor.headers)))  # noqa: E731
    assert names(alice) == ["alice-conn", "campus-gpt"]
    assert names(bob) == ["campus-gpt"]
    assert names(admin) == ["alice-conn", "campus-gpt"]

    a = mine["aiId"]
    err(client.get(f"/model/ol/manage/{a}", headers=bob.headers), 404)
    err(client.put("/model/ol/manage", json={"aiId": a, "aiVersion": "x"}, headers=bob.headers), 404)
    err(client.delete(f"/model/ol/manage/{a}", headers=bob.headers), 404)
    err(client.post(f"/model/ol/manage/{a}/test", headers=bob.headers), 404)
    r = client.get(f"/model/ol/manage/{shared['aiId']}", headers=bob.headers)
    assert ok(r)["aiToken"] == MASKED and TOKEN not in r.text
    err(client.put("/model/ol/manage", json={"aiId": shared["aiId"], "aiVersion": "x"}, headers=bob.headers), 403)
    err(client.delete(f"/model/ol/manage/{shared['aiId']}", headers=bob.headers), 403)

    # a user may link a model to a shared connection, and the model shows it masked
    model = ok(
        client.post(
            "/model/manage", json={"modelName": "bob-gpt", "aiName": "campus-gpt", "linkType": 1}, headers=bob.headers
        )
    )
    r = client.get(f"/model/manage/{model['modelId']}", headers=bob.headers)
    assert ok(r)["modelAiOnline"]["aiId"] == shared["aiId"] and TOKEN not in r.text

    # deleting a connection unlinks its models, it does not delete them
    ok(client.delete(f"/model/ol/manage/{shared['aiId']},{a}", headers=admin.headers))
    assert count(maker, ModelAiOnline) == 0 and count(maker, ModelInfo) == 1
    assert ok(client.get(f"/model/manage/{model['modelId']}", headers=bob.headers))["modelAiOnline"] is None


def test_list_filters(client, maker, alice):
    a = create(client, alice, aiName="a", aiApi="https://a.example/v1", aiVersion="v1", aiType=1)
    b = create(client, alice, aiName="b", aiApi="https://b.example/v1", aiVersion="v1", aiType=3)
    ids = lambda **p: [c["aiId"] for c in ok(client.get("/model/ol/manage", params=p, headers=alice.headers))]  # noqa: E731
    assert ids() == [b["aiId"], a["aiId"]]
    assert ids(aiType=3) == [b["aiId"]]
    assert ids(aiVersion="v1", aiName="a") == [a["aiId"]]
    assert ids(aiId=a["aiId"], aiType=3) == []
    assert ids(createdTimeEnd="2020/01/01 00:00") == []
    paged = ok(client.get("/model/ol/manage", params={"pageSize": 1, "pageNum": 2}, headers=alice.headers))
    assert paged["total"] == 2 and [c["aiId"] for c in paged["items"]] == [a["aiId"]]
    err(client.put("/model/ol/manage", json={"createdTimeStart": "whenever"}, headers=alice.headers), 400)


# --- test connection against real local servers ---------------------------------------------


def test_probe_an_openai_compatible_upstream(client, alice, admin):
    # local upstreams are reachable only by admins' (shared) connections; users may test those
    with OpenAIServer(models=["gpt-4o-mini", "gpt-4o"], api_key="sk-upstream-key-1234") as upstream:
        conn = create(
            client, admin, aiName="up", aiApi=upstream.url + "/chat/completions", aiToken="sk-upstream-key-1234"
        )
        r = client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers)
        result = ok(r)
        assert result["ok"] is True and result["models"] == ["gpt-4o-mini", "gpt-4o"] and result["modelCount"] == 2
        assert isinstance(result["latencyMs"], int) and result["latencyMs"] >= 0
        assert result["url"] == upstream.url + "/models"
        assert upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-upstream-key-1234"
        assert "sk-upstream-key-1234" not in r.text

        # a wrong key: the upstream refuses, the answer says so and does not echo the key
        ok(
            client.put(
                "/model/ol/manage", json={"aiId": conn["aiId"], "aiToken": "sk-wrong-key-9999"}, headers=admin.headers
            )
        )
        r = client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers)
        assert ok(r)["ok"] is False and "refused the key" in ok(r)["error"] and "sk-wrong" not in r.text

        # the unsaved variant (for a form's "test before saving"): loopback for admins only
        body = {"aiApi": upstream.url, "aiToken": "sk-upstream-key-1234"}
        assert ok(client.post("/model/ol/manage/test", json=body, headers=admin.headers))["models"] == [
            "gpt-4o-mini",
            "gpt-4o",
        ]
        assert "admin" in err(client.post("/model/ol/manage/test", json=body, headers=alice.headers), 400)


def test_probe_an_ollama_upstream(client, alice, admin):
    with OllamaServer(models=["qwen2.5:7b", "llama3.2:1b"]) as upstream:
        conn = create(client, admin, aiName="ollama", aiApi=upstream.url, protocol="ollama")
        result = ok(client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers))
        assert result["ok"] is True and result["models"] == ["qwen2.5:7b", "llama3.2:1b"]
        assert upstream.requests[-1]["path"] == "/api/tags"


def test_probe_reports_failures(client, alice, admin):
    with OpenAIServer() as upstream:
        dead_url = upstream.url
    conn = create(client, admin, aiName="dead", aiApi=dead_url)
    result = ok(client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers))
    assert result["ok"] is False and "cannot connect" in result["error"] and result["latencyMs"] is None

    spark = create(client, alice, aiName="spark", aiApi="https://spark-api.xf-yun.com/v3.5/chat", protocol="spark")
    err(client.post(f"/model/ol/manage/{spark['aiId']}/test", headers=alice.headers), 400)
    err(client.post("/model/ol/manage/99999/test", headers=alice.headers), 404)


class _Redirector(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.server.hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def redirector():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    server.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_probe_never_follows_a_redirect(client, alice, admin, redirector):
    conn = create(client, admin, aiName="sneaky", aiApi=f"http://127.0.0.1:{redirector.server_address[1]}/v1")
    result = ok(client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers))
    assert result["ok"] is False and "redirects" in result["error"]
    assert redirector.hits == ["/v1/models"]


def test_probe_refuses_loopback_when_disallowed_at_call_time(db_url, tmp_path, maker, alice, admin):
    # saved while loopback was allowed; the server's policy changed since: the call is refused
    with OpenAIServer() as upstream:
        loose = create_app(make_settings(db_url, tmp_path), playground=False)
        with TestClient(loose) as c:
            conn = create(c, admin, aiName="local", aiApi=upstream.url)
        strict = create_app(make_settings(db_url, tmp_path, allow_loopback=False), playground=False)
        with TestClient(strict) as c:
            assert "loopback" in err(c.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers), 400)
        assert upstream.requests == []


def test_probe_service_for_the_dashboard(maker, settings, alice):
    """The dashboard calls the service directly: no HTTP, no transaction held while probing."""
    with OpenAIServer(models=["m1"]) as upstream:
        with maker.begin() as s:
            ai_id = connections.create_connection(
                s, settings, Viewer.for_admin("root"), ai_name="svc", ai_api=upstream.url
            ).ai_id
        result = connections.probe_connection(maker, settings, Viewer.for_user(alice.id), ai_id)
        assert result.ok and result.models == ["m1"]
        assert connections.api_base("https://h/v1/chat/completions", "openai") == "https://h/v1"
        assert connections.models_url("http://h:11434/api/chat", "ollama") == "http://h:11434/api/tags"
