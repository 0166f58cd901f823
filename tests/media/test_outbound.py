"""The media engines' outbound calls: chosen by name with the connections' visibility rule
(finding 2), never following a redirect, pinned to checked addresses (finding 3), and a
user's own connection never reaching loopback (finding 9). Real local servers only."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from backend import security
from backend.server import create_app
from db.models import ModelAiOnline
from tests.factories import make_settings, make_user, user_headers
from tests.media.fakes import FAKE_KEYS, FAKE_OPENAI_KEY
from tests.media.helpers import add_connection, snapshot
from tests.media.samples import small_picture, speech_pcm
from tests.outbound.servers import Listener, Resolver, free_port_on

VOICE, PICTURE = "/voiceModel/chat", "/PictureToTextModel/chat"
PROTOCOLS = {
    "openai-audio": VOICE,
    "openai-vision": PICTURE,
    "iflytek-iat": VOICE,
    "iflytek-ocr": PICTURE,
}


def send(client, url, headers, model):
    if url == VOICE:
        files = {"file": ("a.pcm", speech_pcm()[:32000], "application/octet-stream")}
    else:
        files = {"file": ("a.png", small_picture())}
    return client.post(url, params={"model": model}, files=files, headers=headers)


def users_connection(maker, settings, owner_id: str, *, name: str, protocol: str, url: str, secret: str) -> None:
    """A connection a user created (created_by = the user's id), as the API stores it."""
    with maker.begin() as s:
        s.add(
            ModelAiOnline(
                ai_name=name,
                ai_api=url,
                ai_token_encrypted=security.encrypt_secret(settings, secret),
                ai_type=1,
                protocol=protocol,
                timeout=10,
                created_by=owner_id,
            )
        )


def secret_for(protocol: str) -> str:
    return FAKE_KEYS.pack() if protocol.startswith("iflytek") else FAKE_OPENAI_KEY


# --- finding 2: another user's private connection is an unknown name ------------------------


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_another_users_connection_answers_like_an_unknown_name(client, maker, settings, protocol):
    url = PROTOCOLS[protocol]
    alice = make_user(maker, settings, pic_times=5)
    bob = make_user(maker, settings, pic_times=5)
    with Listener(payload={"text": "alice's upstream answered"}) as upstream:
        path = "/v2/iat" if protocol == "iflytek-iat" else "/v1"
        scheme = "ws" if protocol == "iflytek-iat" else "http"
        users_connection(
            maker, settings, alice.id, name="alice-private", protocol=protocol,
            url=upstream.url(scheme=scheme) + path, secret=secret_for(protocol),
        )  # fmt: skip
        bob_headers = user_headers(client, bob.username)
        before = snapshot(maker, bob.id)
        private = send(client, url, bob_headers, "alice-private")
        unknown = send(client, url, bob_headers, "no-such-engine")
        assert private.status_code == unknown.status_code == 404, private.text
        assert private.json()["code"] == unknown.json()["code"] == "MODEL_ERROR"
        assert private.json()["msg"].replace("alice-private", "X") == unknown.json()["msg"].replace(
            "no-such-engine", "X"
        )
        assert snapshot(maker, bob.id) == before
        # alice sees her own (the guard then refuses loopback for a user's connection: finding 9)
        mine = send(client, url, user_headers(client, alice.username), "alice-private")
        assert mine.status_code == 400 and "only connections an admin manages" in mine.json()["msg"], mine.text
        assert upstream.hits == []  # neither bob nor alice's refused call reached the upstream


def test_shared_connections_stay_usable_by_every_user(client, maker, settings, connections):
    bob = make_user(maker, settings, pic_times=1)
    r = send(client, PICTURE, user_headers(client, bob.username), "oa-vision")
    assert r.status_code == 200 and r.json()["model"] == "oa-vision", r.text
    r = send(client, VOICE, user_headers(client, bob.username), "oa-audio")
    assert r.status_code == 200, r.text


# --- finding 3: redirects are never followed ------------------------------------------------


@pytest.fixture
def dns(monkeypatch) -> Resolver:
    resolver = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_a_redirect_to_the_metadata_address_is_not_followed_under_default_settings(client, maker, settings, protocol):
    url = PROTOCOLS[protocol]
    user = make_user(maker, settings, pic_times=5)
    with Listener(redirect_to="http://169.254.169.254/latest/meta-data/iam/security-credentials/") as redirector:
        scheme, path = ("ws", "/v2/iat") if protocol == "iflytek-iat" else ("http", "/v1")
        add_connection(
            maker, settings, name="redirecting", protocol=protocol,
            url=redirector.url(scheme=scheme) + path, secret=secret_for(protocol),
        )  # fmt: skip
        r = send(client, url, user_headers(client, user.username), "redirecting")
        assert r.status_code == 502, r.text
        message = r.json()["msg"]
        assert "307" in message and "redirect" in message and "not followed" in message
        assert "169.254" not in message and FAKE_OPENAI_KEY not in message
        assert len(redirector.hits) == 1  # one call, no second hop anywhere
    assert snapshot(maker, user.id).pic_times == 5  # a failed recognition costs nothing


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_a_redirect_to_a_forbidden_listener_never_reaches_it(db_url, tmp_path, maker, protocol, dns):
    """allow_loopback off, only 127.0.0.1 allowed: a real server on 127.0.0.2 is the forbidden target."""
    settings = make_settings(db_url, tmp_path, allow_loopback=False, allowed_private_hosts="127.0.0.1/32")
    port = free_port_on("127.0.0.1", "127.0.0.2")
    url = PROTOCOLS[protocol]
    with (
        Listener("127.0.0.2", port, payload={"text": "internal secret"}) as forbidden,
        Listener("127.0.0.1", port, redirect_to=f"http://127.0.0.2:{port}/v1/audio/transcriptions") as redirector,
        TestClient(create_app(settings, playground=False)) as client,
    ):
        user = make_user(maker, settings, pic_times=5)
        scheme, path = ("ws", "/v2/iat") if protocol == "iflytek-iat" else ("http", "/v1")
        add_connection(
            maker, settings, name="redirecting", protocol=protocol,
            url=redirector.url(scheme=scheme) + path, secret=secret_for(protocol),
        )  # fmt: skip
        r = send(client, url, user_headers(client, user.username), "redirecting")
        assert r.status_code == 502 and "not followed" in r.json()["msg"], r.text
        assert forbidden.hits == [] and len(redirector.hits) == 1


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_dns_rebinding_never_reaches_the_forbidden_address(db_url, tmp_path, maker, protocol, dns):
    settings = make_settings(db_url, tmp_path, allow_loopback=False, allowed_private_hosts="127.0.0.1/32")
    port = free_port_on("127.0.0.1", "127.0.0.2")
    url = PROTOCOLS[protocol]
    with (
        Listener("127.0.0.2", port, payload={"text": "internal secret"}) as forbidden,
        Listener("127.0.0.1", port, payload={"text": "public answer"}) as allowed,
        TestClient(create_app(settings, playground=False)) as client,
    ):
        user = make_user(maker, settings, pic_times=10)
        headers = user_headers(client, user.username)
        scheme, path = ("ws", "/v2/iat") if protocol == "iflytek-iat" else ("http", "/v1")
        add_connection(
            maker, settings, name="rebinding", protocol=protocol,
            url=f"{scheme}://rebind.test:{port}{path}", secret=secret_for(protocol),
        )  # fmt: skip
        # every lookup flips: the guard's check sees 127.0.0.1, a second resolution 127.0.0.2
        dns.set("rebind.test", ["127.0.0.1"], ["127.0.0.2"])
        # (the old code checked the first answer and let the client resolve again: it
        # reached 127.0.0.2 on every request)
        for _ in range(6):
            r = send(client, url, headers, "rebinding")
            assert r.status_code == 400 and "resolves to a loopback address" in r.json()["msg"], r.text
        assert forbidden.hits == [] and allowed.hits == []
        assert dns.lookups["rebind.test"] == 12  # the selection check, then one pinned lookup per connect
        assert snapshot(maker, user.id).pic_times == 10
