"""The connection test ("probe") and saving connections, against real local listeners:
loopback and private addresses are for admins' connections only (finding 9), redirects
and DNS rebinding never lead past the guard (finding 3), and a key that cannot travel in
a header is a clear 400 (finding 14)."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from backend import security
from backend.server import create_app
from db.models import ModelAiOnline
from tests.factories import admin_headers, make_admin, make_settings, make_user, user_headers
from tests.outbound.servers import Listener, Resolver, closed_port, free_port_on
from tests.seed003.helpers import count, err, ok

TEST = "/model/ol/manage/test"


@pytest.fixture
def listeners():
    """A closed port, an open port that is not a model server, and a JSON model list."""
    with Listener(payload=["not", "a", "model", "list"]) as other, Listener() as models:
        yield (
            {
                "closed": f"http://127.0.0.1:{closed_port()}/v1",
                "open": other.url() + "/v1",
                "json": models.url() + "/v1",
            },
            (
                other,
                models,
            ),
        )


def test_users_cannot_tell_a_closed_port_from_an_open_one(client, maker, alice, listeners):
    urls, servers = listeners
    answers: dict[str, list] = {}
    for kind, url in urls.items():
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.1"):
            r = client.post(TEST, json={"aiApi": url.replace("127.0.0.1", host)}, headers=alice.headers)
            answers.setdefault(kind, []).append((r.status_code, r.json()))
    # one and the same answer whatever listens there (the port is not even named): a
    # refusal before any connection is made
    assert answers["closed"] == answers["open"] == answers["json"]
    for status, body in answers["json"]:
        assert status == 400 and "only connections an admin manages" in body["message"]
    assert all(server.hits == [] for server in servers)
    assert "secret-internal-model" not in str(answers)


def test_users_cannot_save_or_probe_a_loopback_connection(client, maker, settings, alice, admin, listeners):
    urls, servers = listeners
    before = count(maker, ModelAiOnline)
    for url in urls.values():
        body = {"aiName": "mine", "aiApi": url, "protocol": "openai"}
        assert "admin" in err(client.post("/model/ol/manage", json=body, headers=alice.headers), 400)
    assert count(maker, ModelAiOnline) == before
    # a user's connection saved before this rule (or with a name that resolved elsewhere then)
    with maker.begin() as s:
        row = ModelAiOnline(
            ai_name="old-one",
            ai_api=urls["json"],
            ai_token_encrypted=security.encrypt_secret(settings, "k"),
            protocol="openai",
            timeout=5,
            created_by=alice.id,
        )
        s.add(row)
        s.flush()
        ai_id = row.ai_id
    assert "admin" in err(client.post(f"/model/ol/manage/{ai_id}/test", headers=alice.headers), 400)
    # the rule follows the connection's owner: an admin testing alice's connection is refused too
    assert "admin" in err(client.post(f"/model/ol/manage/{ai_id}/test", headers=admin.headers), 400)
    # and an admin cannot move a user's connection onto loopback
    update = {"aiId": ai_id, "aiApi": urls["open"]}
    assert "admin" in err(client.put("/model/ol/manage", json=update, headers=admin.headers), 400)
    assert all(server.hits == [] for server in servers)


def test_even_the_private_allowlist_opens_nothing_for_users(db_url, tmp_path, maker, listeners):
    urls, servers = listeners
    settings = make_settings(db_url, tmp_path, allow_loopback=True, allowed_private_hosts="127.0.0.0/8,localhost")
    with TestClient(create_app(settings, playground=False)) as c:
        user = make_user(maker, settings)
        headers = user_headers(c, user.username)
        for url in urls.values():
            assert "admin" in err(c.post(TEST, json={"aiApi": url}, headers=headers), 400)
    assert all(server.hits == [] for server in servers)


def test_admins_probe_local_engines_as_before(client, admin, listeners):
    urls, (other, models) = listeners
    closed = ok(client.post(TEST, json={"aiApi": urls["closed"]}, headers=admin.headers))
    assert closed["ok"] is False and "cannot connect" in closed["error"]
    wrong = ok(client.post(TEST, json={"aiApi": urls["open"]}, headers=admin.headers))
    assert wrong["ok"] is False and "not a model list" in wrong["error"]
    listed = ok(client.post(TEST, json={"aiApi": urls["json"]}, headers=admin.headers))
    assert listed["ok"] is True and listed["models"] == ["secret-internal-model"]
    assert len(other.hits) == 1 and len(models.hits) == 1


def test_shared_connections_probe_for_users(client, alice, admin, listeners):
    urls, (_, models) = listeners
    conn = ok(client.post("/model/ol/manage", json={"aiName": "shared", "aiApi": urls["json"]}, headers=admin.headers))
    result = ok(client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=alice.headers))
    assert result["ok"] is True and result["models"] == ["secret-internal-model"]
    assert len(models.hits) == 1


# --- redirects and rebinding ---------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch) -> Resolver:
    resolver = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:{port}/v1/models"])
def test_the_probe_reports_a_redirect_and_does_not_follow_it(db_url, tmp_path, maker, target):
    settings = make_settings(db_url, tmp_path, allow_loopback=False, allowed_private_hosts="127.0.0.1/32")
    port = free_port_on("127.0.0.1", "127.0.0.2")
    with (
        Listener("127.0.0.2", port) as forbidden,
        Listener("127.0.0.1", port, redirect_to=target.format(port=port)) as redirector,
        TestClient(create_app(settings, playground=False)) as c,
    ):
        make_admin(maker, settings, name="root")
        result = ok(c.post(TEST, json={"aiApi": redirector.url() + "/v1"}, headers=admin_headers(c, "root")))
        assert result["ok"] is False and "redirects (HTTP 307)" in result["error"]
        assert "secret-internal-model" not in str(result)
        assert forbidden.hits == [] and len(redirector.hits) == 1


def test_the_probe_is_pinned_against_dns_rebinding(db_url, tmp_path, maker, dns):
    settings = make_settings(db_url, tmp_path, allow_loopback=False, allowed_private_hosts="127.0.0.1/32")
    port = free_port_on("127.0.0.1", "127.0.0.2")
    with (
        Listener("127.0.0.2", port, payload={"data": [{"id": "internal"}]}) as forbidden,
        Listener("127.0.0.1", port, payload={"data": [{"id": "public"}]}) as allowed,
        TestClient(create_app(settings, playground=False)) as c,
    ):
        make_admin(maker, settings, name="root")
        headers = admin_headers(c, "root")
        dns.set("rebind.test", ["127.0.0.1"], ["127.0.0.2"])  # check sees .1, a second lookup .2
        for _ in range(6):
            r = c.post(TEST, json={"aiApi": f"http://rebind.test:{port}/v1"}, headers=headers)
            assert "resolves to a loopback address" in err(r, 400)
        assert forbidden.hits == [] and allowed.hits == []
        assert dns.lookups["rebind.test"] == 12


# --- finding 14: a key that cannot travel ----------------------------------------------------


def test_a_non_ascii_key_is_a_clear_400_on_test_and_on_save(client, maker, settings, alice, admin, listeners):
    urls, (_, models) = listeners
    for token in ("sk-ключ", "sk-\u00e9t\u00e9", "sk-\u4e2d\u6587", "sk-a\nb", "sk-\u200b"):
        message = err(client.post(TEST, json={"aiApi": urls["json"], "aiToken": token}, headers=admin.headers), 400)
        assert "aiToken must be printable ASCII" in message and token not in message
        body = {"aiName": "k", "aiApi": "https://8.8.8.8/v1", "aiToken": token}
        assert "printable ASCII" in err(client.post("/model/ol/manage", json=body, headers=alice.headers), 400)
    conn = ok(client.post("/model/ol/manage", json={"aiName": "k", "aiApi": urls["json"]}, headers=admin.headers))
    update = {"aiId": conn["aiId"], "aiToken": "sk-ключ"}
    assert "printable ASCII" in err(client.put("/model/ol/manage", json=update, headers=admin.headers), 400)
    # a key stored before the check existed: the probe refuses it the same way, no 500
    with maker.begin() as s:
        s.get(ModelAiOnline, conn["aiId"]).ai_token_encrypted = security.encrypt_secret(settings, "sk-ключ")
    assert "printable ASCII" in err(client.post(f"/model/ol/manage/{conn['aiId']}/test", headers=admin.headers), 400)
    assert models.hits == []
    assert ok(client.post(TEST, json={"aiApi": urls["json"], "aiToken": "sk-plain_ASCII-123"}, headers=admin.headers))[
        "ok"
    ]
