"""The OpenAI-compatible /v1 with the official `openai` client on a real uvicorn server,
per-user API keys (expiry, revocation, allow-list) and their management endpoints."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import event, select, update

from backend import security
from backend.accounts import service as accounts
from db.models import ApiKey, ModelConversation, UsageRecord
from tests.factories import admin_headers, make_admin, make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model, assert_ledger_consistent, balance
from tests.live import live_server


@pytest.fixture
def upstream():
    with OpenAIServer(reply="Streaming words from the fake upstream", prompt_tokens=25) as server:
        yield server


def _new_key(client, headers, **body) -> str:
    r = client.post("/user/api_keys", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["key"]


@pytest.mark.committed
def test_the_openai_client_works_unchanged(app, client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=10_000)
    key = _new_key(client, user_headers(client, user.username))
    with live_server(app) as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        assert [m.id for m in sdk.models.list()] == ["fake"]

        answer = sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == upstream.reply_text
        assert answer.choices[0].finish_reason == "stop"
        n = len(upstream.deltas)
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (
            25,
            n,
            25 + n,
        )
        after_first = balance(maker, user.id)
        assert after_first == 10_000 - answer.usage.total_tokens

        stream = sdk.chat.completions.create(
            model="fake",
            messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=4,
            temperature=0.5,
        )
        pieces, usage, finish = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        assert "".join(pieces) == "".join(upstream.deltas[:4])
        assert finish == "length"
        assert usage.completion_tokens == 4 and usage.total_tokens == usage.prompt_tokens + 4
        assert balance(maker, user.id) == after_first - usage.total_tokens
        sent = upstream.requests[-1]["json"]
        assert sent["temperature"] == 0.5 and sent["max_tokens"] == 4
        assert sent["messages"][-2] == {"role": "system", "content": "be brief"}

        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.UnprocessableEntityError):
            sdk.chat.completions.create(model="fake", messages=[])
        bad = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-not-a-real-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    assert_ledger_consistent(maker, user.id)
    with maker() as s:
        rows = list(s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id, UsageRecord.status == "ok")))
        assert len(rows) == 2
        # /v1 calls go into the history only when they name a conversation
        assert s.scalars(select(ModelConversation).where(ModelConversation.user_id == user.id)).all() == []


@pytest.mark.committed  # a live server
def test_v1_quota_and_upstream_errors(app, client, maker, settings):
    with OpenAIServer(reply="a b c d e f g h", fail_after_chunks=2) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        poor = make_user(maker, settings, tokens=10)
        rich = make_user(maker, settings, tokens=5_000)
        poor_key = _new_key(client, user_headers(client, poor.username))
        rich_key = _new_key(client, user_headers(client, rich.username))
        with live_server(app) as base:
            sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=poor_key, max_retries=0)
            with pytest.raises(openai.APIStatusError) as err:
                sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 402
            assert upstream.requests == []

            sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=rich_key, max_retries=0)
            got = []
            with pytest.raises(openai.APIError):
                for chunk in sdk.chat.completions.create(
                    model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    got += [c.delta.content or "" for c in chunk.choices]
            assert "".join(got) == "a b "
    assert balance(maker, poor.id) == 10
    spent = 5_000 - assert_ledger_consistent(maker, rich.id)
    assert 0 < spent < 10  # the two delivered words, no prompt


@pytest.mark.committed  # a live server
def test_conversation_id_header_records_the_exchange(app, client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=5_000)
    headers = user_headers(client, user.username)
    first = client.post(
        "/textModel/chat", json={"dialog": [{"role": "user", "content": "start"}]} | {"model": "fake"}, headers=headers
    )
    conversation_id = first.json()["conversation_id"]
    key = _new_key(client, headers)
    with live_server(app) as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        raw = sdk.chat.completions.with_raw_response.create(
            model="fake",
            messages=[{"role": "user", "content": "continue"}],
            extra_headers={"X-Conversation-Id": str(conversation_id)},
        )
        assert raw.headers["x-conversation-id"] == str(conversation_id)
        other = make_user(maker, settings, tokens=5_000)
        other_sdk = openai.OpenAI(
            base_url=f"{base}/v1", api_key=_new_key(client, user_headers(client, other.username)), max_retries=0
        )
        with pytest.raises(openai.NotFoundError):  # someone else's conversation
            other_sdk.chat.completions.create(
                model="fake",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"conversation_id": conversation_id},
            )
    with maker() as s:
        conv = s.get(ModelConversation, conversation_id)
        assert [m.content for m in conv.messages] == ["start", upstream.reply_text, "continue", upstream.reply_text]
    assert balance(maker, other.id) == 5_000


@pytest.mark.committed  # a live server
def test_api_key_expiry_revocation_and_allow_list(app, client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    add_online_model(maker, settings, url=upstream.url, name="second")
    user = make_user(maker, settings, tokens=50_000)
    headers = user_headers(client, user.username)
    limited = _new_key(client, headers, name="only-second", allowed_models=["second"])
    expiring = _new_key(client, headers, name="soon", expires_in_days=1)
    revoked = _new_key(client, headers, name="gone")
    with maker.begin() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == security.hash_api_key(expiring))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    listing = client.get("/user/api_keys", headers=headers).json()["api_keys"]
    gone_id = next(k["id"] for k in listing if k["name"] == "gone")
    assert client.post(f"/user/api_keys/{gone_id}/revoke", headers=headers).json()["api_key"]["status"] == "revoked"

    msg = [{"role": "user", "content": "hi"}]
    with live_server(app) as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=limited, max_retries=0)
        assert [m.id for m in sdk.models.list()] == ["second"]
        assert sdk.chat.completions.create(model="second", messages=msg).choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(model="fake", messages=msg)
        for key, words in ((expiring, "expired"), (revoked, "revoked")):
            sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as err:
                sdk.chat.completions.create(model="fake", messages=msg)
            assert words in str(err.value)
    assert len(upstream.requests) == 1


def test_key_management_shows_the_key_once_and_checks_ownership(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    alice = make_user(maker, settings)
    bob = make_user(maker, settings)
    a_headers = user_headers(client, alice.username)
    b_headers = user_headers(client, bob.username)

    r = client.post("/user/api_keys", json={"name": "laptop"}, headers=a_headers)
    assert r.status_code == 200 and r.json()["code"] == 0
    key, shown = r.json()["key"], r.json()["api_key"]
    assert key.startswith("sk-") and shown["prefix"] == key[:7] + "…"
    listing = client.get("/user/api_keys", headers=a_headers)
    assert key not in listing.text and security.hash_api_key(key) not in listing.text
    assert [k["name"] for k in listing.json()["api_keys"]] == ["laptop"]
    assert client.get("/user/api_keys", headers=b_headers).json()["api_keys"] == []
    # Bob cannot revoke Alice's key; it keeps working
    r = client.post(f"/user/api_keys/{shown['id']}/revoke", headers=b_headers)
    assert r.status_code == 404
    with maker() as s:
        assert s.get(ApiKey, shown["id"]).revoked_at is None

    bad = [
        ({"allowed_models": ["nope"]}, 404),
        ({"allowed_models": []}, 422),
        ({"expires_at": "2001-01-01T00:00:00Z"}, 422),
        ({"expires_in_days": 0}, 422),
        ({"expires_in_days": 5, "expires_at": "2999-01-01T00:00:00Z"}, 422),
        ({"name": "x" * 65}, 422),
    ]
    for body, status in bad:
        r = client.post("/user/api_keys", json=body, headers=a_headers)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["code"], str)
    assert client.post("/user/api_keys", json={}).status_code == 401
    assert len(client.get("/user/api_keys", headers=a_headers).json()["api_keys"]) == 1

    admin = make_admin(maker, settings)
    ah = admin_headers(client, admin.name)
    r = client.post("/admin/api_keys", json={"username": bob.username, "allowed_models": ["fake"]}, headers=ah)
    assert r.status_code == 200 and r.json()["key"].startswith("sk-")
    assert client.post("/admin/api_keys", json={"name": "no owner"}, headers=ah).status_code == 422
    assert client.post("/admin/api_keys", json={"username": "ghost"}, headers=ah).status_code == 404
    everyone = client.get("/admin/api_keys", headers=ah).json()["api_keys"]
    assert {k["user_id"] for k in everyone} == {alice.id, bob.id}
    bobs = client.get("/admin/api_keys", params={"username": bob.username}, headers=ah).json()["api_keys"]
    assert [k["allowed_models"] for k in bobs] == [["fake"]]
    r = client.post(f"/admin/api_keys/{shown['id']}/revoke", headers=ah)
    assert r.json()["api_key"]["status"] == "revoked"
    assert client.get("/admin/api_keys", headers=a_headers).status_code == 401


def test_a_warm_key_check_reads_nothing_and_a_revocation_or_a_disabled_account_is_seen_at_once(
    client, maker, settings, upstream
):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=50_000)
    headers = user_headers(client, user.username)
    key = _new_key(client, headers, name="cached")
    key_id = next(k["id"] for k in client.get("/user/api_keys", headers=headers).json()["api_keys"])
    ask = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    bearer = {"Authorization": f"Bearer {key}"}
    # the first use writes last_used_at (a write to the key forgets the cached check); the second caches it
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=ask, headers=bearer).status_code == 200

    statements: list[str] = []
    engine = maker.kw["bind"]
    record = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert client.post("/v1/chat/completions", json=ask, headers=bearer).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert any("quota" in q for q in statements)  # the chat ran and was charged …
    assert not [q for q in statements if "api_keys" in q]  # … and its key check read nothing

    assert client.post(f"/user/api_keys/{key_id}/revoke", headers=headers).status_code == 200
    r = client.post("/v1/chat/completions", json=ask, headers=bearer)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    other = {"Authorization": f"Bearer {_new_key(client, headers, name='second')}"}
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=ask, headers=other).status_code == 200
    with maker.begin() as s:
        accounts.modify_user(s, settings, target_username=user.username, actor="admin:test", new_status="disabled")
    assert client.post("/v1/chat/completions", json=ask, headers=other).status_code == 403


@pytest.mark.committed  # the chat's database threads
def test_a_stream_sends_its_role_with_the_first_piece_and_its_ending_with_the_end_of_the_body(
    app, client, maker, settings, upstream
):
    """Each body message is a socket write: the role event rides with the first piece, and the
    finish, usage and [DONE] events end the body in one message (no empty terminator after)."""
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=10_000)
    key = _new_key(client, user_headers(client, user.username))
    body = json.dumps(
        {
            "model": "fake",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def exchange() -> None:
        ended = asyncio.Event()
        requests = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if requests:
                return requests.pop()
            await ended.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                ended.set()

        await app(scope, receive, send)

    asyncio.run(exchange())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    pieces = [m for m in sent[1:] if m["type"] == "http.response.body"]
    first, last = pieces[0]["body"], pieces[-1]
    assert first.count(b"data: ") >= 2 and b'"role":"assistant"' in first and b'"content":"Streaming' in first
    assert last["more_body"] is False and all(m["more_body"] for m in pieces[:-1])
    assert last["body"].endswith(b"data: [DONE]\n\n") and b'"finish_reason":"stop"' in last["body"]
    assert b'"usage":' in last["body"]
    assert balance(maker, user.id) < 10_000
