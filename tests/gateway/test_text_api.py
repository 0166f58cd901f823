"""Seed-000 /textModel/chat, /textModel/stream and /admin/console_test through the gateway,
against a real OpenAI-compatible upstream on 127.0.0.1 and the embedded llama.cpp model."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from backend.billing import quota
from db.models import ModelConversation, ModelMessage, QuotaLedger, QuotaReservation, UsageRecord
from tests.factories import admin_headers, make_admin, make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import (
    EXAMPLES,
    SYSTEM_PROMPT,
    UPSTREAM_KEY,
    add_default_embedded,
    add_online_model,
    assert_ledger_consistent,
    balance,
    parse_like_desktop_client,
)

DIALOG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def upstream():
    with OpenAIServer(reply="Hello there from upstream", prompt_tokens=40) as server:
        yield server


def _usage_rows(maker, **where):
    with maker() as s:
        stmt = select(UsageRecord)
        for key, value in where.items():
            stmt = stmt.where(getattr(UsageRecord, key) == value)
        return list(s.scalars(stmt))


def test_chat_charges_prompt_plus_completion_and_sends_the_persona(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url, temperature=0.3, top_k=7, num_predict=100)
    user = make_user(maker, settings, tokens=10_000)
    r = client.post(
        "/textModel/chat",
        json={"dialog": DIALOG, "model": "fake"},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 0
    assert body["content"] == upstream.reply_text
    completion = len(upstream.deltas)
    assert body["consume_token"] == 40 + completion
    assert balance(maker, user.id) == 10_000 - body["consume_token"]
    assert_ledger_consistent(maker, user.id)

    sent = upstream.requests[-1]["json"]
    expected = [{"role": "system", "content": SYSTEM_PROMPT}]
    for question, answer in EXAMPLES:
        expected += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    assert sent["messages"] == expected + DIALOG
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 100
    assert "top_k" not in sent  # OpenAI has no top_k: dropped, never sent blind
    assert upstream.requests[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"

    [row] = _usage_rows(maker, user_id=user.id)
    assert (row.status, row.provider, row.model, row.academy) == ("ok", "openai", "fake", "CS")
    assert (row.prompt_tokens, row.completion_tokens) == (40, completion)
    assert row.latency_ms is not None and row.ttft_ms is not None and row.ttft_ms <= row.latency_ms

    # the exchange went into a new conversation, returned to the caller
    with maker() as s:
        conv = s.get(ModelConversation, body["conversation_id"])
        assert conv.user_id == user.id
        assert [m.content for m in s.scalars(select(ModelMessage).where(ModelMessage.conversation_id == conv.id))] == [
            "Say hello",
            upstream.reply_text,
        ]


def test_stream_frames_parse_like_the_desktop_client_and_match_the_ledger(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=5_000)
    headers = user_headers(client, user.username)
    with client.stream("POST", "/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        text, left, frames = parse_like_desktop_client(r.iter_lines(), 5_000)
    assert text == upstream.reply_text
    assert [f["header"]["status"] for f in frames] == [0] + [1] * (len(frames) - 2) + [2]
    assert all(f["header"]["code"] == 0 for f in frames)
    assert len({f["header"]["sid"] for f in frames}) == 1
    usage = frames[-1]["payload"]["usage"]["text"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == 40 + len(upstream.deltas)
    # what the client subtracted is exactly what the ledger charged
    assert balance(maker, user.id) == left
    assert assert_ledger_consistent(maker, user.id) == left
    assert frames[-1]["header"]["conversation_id"] is not None


def test_too_little_quota_is_402_before_any_upstream_call(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=30)
    headers = user_headers(client, user.username)
    for path in ("/textModel/chat", "/textModel/stream"):
        r = client.post(path, json={"dialog": DIALOG, "model": "fake"}, headers=headers)
        assert r.status_code == 402, r.text
        assert r.json()["code"] == "TOKEN_NOT_ENOUGH"
        assert "30 left" in r.json()["msg"]
    assert upstream.requests == []
    assert balance(maker, user.id) == 30
    assert_ledger_consistent(maker, user.id)
    rows = _usage_rows(maker, user_id=user.id)
    assert len(rows) == 2 and all(r.status == "error" and r.error.startswith("TOKEN_NOT_ENOUGH") for r in rows)


def test_upstream_500_releases_everything_and_never_shows_the_key(client, maker, settings, caplog):
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(fail_status=500, fail_message=f"boom with {UPSTREAM_KEY}") as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        headers = user_headers(client, user.username)
        r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
        assert r.status_code == 502
        assert r.json()["code"] == "MODEL_ERROR"
        assert "500" in r.json()["msg"]
        # an error before the first byte of a stream is the plain envelope too
        r2 = client.post("/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
        assert r2.status_code == 502
        assert r2.json()["code"] == "MODEL_ERROR"
        assert len(upstream.requests) == 2
    for text in (r.text, r2.text, caplog.text):
        assert UPSTREAM_KEY not in text
    assert balance(maker, user.id) == 5_000
    assert_ledger_consistent(maker, user.id)
    with maker() as s:
        statuses = set(s.scalars(select(QuotaReservation.status).where(QuotaReservation.user_id == user.id)))
    assert statuses == {"released"}
    rows = _usage_rows(maker, user_id=user.id)
    assert [r.status for r in rows] == ["error", "error"]
    assert all(UPSTREAM_KEY not in (r.error or "") for r in rows)


def test_an_upstream_page_instead_of_an_answer_is_502_and_charges_nothing(client, maker, settings):
    with OpenAIServer(html_page="<html>Sign in to the campus network</html>") as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        headers = user_headers(client, user.username)
        r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
        r2 = client.post("/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
    for answer in (r, r2):
        assert answer.status_code == 502, answer.text
        assert answer.json()["code"] == "MODEL_ERROR" and "not understood" in answer.json()["msg"]
    assert balance(maker, user.id) == 5_000
    assert_ledger_consistent(maker, user.id)
    assert [row.status for row in _usage_rows(maker, user_id=user.id)] == ["error", "error"]


def test_an_upstream_that_ignores_stream_still_answers_and_is_charged_its_usage(client, maker, settings):
    with OpenAIServer(reply="One whole answer", prompt_tokens=12, ignore_stream=True) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        r = client.post(
            "/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=user_headers(client, user.username)
        )
    assert r.status_code == 200, r.text
    text, left, _ = parse_like_desktop_client(r.iter_lines(), 5_000)
    assert text == "One whole answer"
    assert balance(maker, user.id) == left == 5_000 - (12 + 3)
    assert_ledger_consistent(maker, user.id)


def test_upstream_timeout_is_504_and_releases(client, maker, settings):
    with OpenAIServer(delay_before_first_byte=5) as upstream:
        add_online_model(maker, settings, url=upstream.url, timeout=1)
        user = make_user(maker, settings, tokens=5_000)
        r = client.post(
            "/textModel/chat",
            json={"dialog": DIALOG, "model": "fake"},
            headers=user_headers(client, user.username),
        )
    assert r.status_code == 504, r.text
    assert r.json()["code"] == "MODEL_ERROR"
    assert balance(maker, user.id) == 5_000
    assert_ledger_consistent(maker, user.id)


def test_error_mid_stream_ends_with_an_error_frame_and_charges_what_was_delivered(client, maker, settings):
    with OpenAIServer(reply="one two three four five six", fail_after_chunks=3) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        headers = user_headers(client, user.username)
        with client.stream("POST", "/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=headers) as r:
            assert r.status_code == 200
            text, left, frames = parse_like_desktop_client(r.iter_lines(), 5_000)
    assert text == "one two three "
    last = frames[-1]
    assert last["header"]["status"] == 2 and last["header"]["code"] != 0
    assert "MODEL_ERROR" in last["header"]["message"]
    charged = last["payload"]["usage"]["text"]["total_tokens"]
    assert 0 < charged < 40  # the delivered completion only, no prompt
    assert balance(maker, user.id) == left == 5_000 - charged
    assert_ledger_consistent(maker, user.id)
    [row] = _usage_rows(maker, user_id=user.id)
    assert row.status == "error" and row.completion_tokens == charged


def test_input_is_validated_in_the_envelope_and_changes_nothing(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    add_online_model(maker, settings, url=upstream.url, name="off", disable=1)
    other = make_user(maker, settings)
    add_online_model(maker, settings, url=upstream.url, name="theirs", user_id=other.id)
    user = make_user(maker, settings, tokens=5_000)
    headers = user_headers(client, user.username)
    cases = [
        ({"dialog": []}, 422),
        ({"dialog": [{"role": "wizard", "content": "x"}]}, 422),
        ({"dialog": [{"role": "user", "content": 5}]}, 422),
        ({"dialog": [{"role": "user"}]}, 422),
        ({"dialog": "hello"}, 422),
        ({"dialog": [{"role": "system", "content": "only a system turn"}]}, 422),
        ({"dialog": [{"role": "user", "content": "x" * 30_000}] * 4}, 413),
        ({"dialog": DIALOG, "max_tokens": 0}, 422),
        ({"dialog": DIALOG, "model": "nope"}, 404),
        ({"dialog": DIALOG, "model": "off"}, 403),
        ({"dialog": DIALOG, "model": "theirs"}, 404),
        ({"dialog": DIALOG, "model": "fake", "conversation_id": 999999}, 404),
    ]
    for body, status in cases:
        r = client.post("/textModel/chat", json=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["code"], str) and r.json()["msg"]
    r = client.post("/textModel/chat", content=b"{not json", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["msg"]
    r = client.post("/textModel/chat", json={"dialog": DIALOG})
    assert r.status_code == 401
    assert upstream.requests == []
    assert balance(maker, user.id) == 5_000
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(QuotaLedger).where(QuotaLedger.user_id == user.id)) == 1


def test_legacy_uuid_and_username_when_switched_on(maker, settings, upstream, tmp_path):
    from fastapi.testclient import TestClient

    from backend.server import create_app
    from tests.factories import make_settings

    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=5_000)
    body = {"uuid": user.id, "username": user.username, "dialog": DIALOG, "model": "fake"}
    with TestClient(create_app(settings, playground=False)) as strict:
        assert strict.post("/textModel/chat", json=body).status_code == 401
    legacy = make_settings(settings.database_url, tmp_path, legacy_uuid_auth=True)
    with TestClient(create_app(legacy, playground=False)) as old:
        r = old.post("/textModel/chat", json=body)
        assert r.status_code == 200, r.text
        wrong = old.post("/textModel/chat", json={**body, "username": "someone-else"})
        assert wrong.status_code == 200 and wrong.json()["code"] == "USER_NOT_FOUND"  # as the original answered
    assert balance(maker, user.id) == 5_000 - r.json()["consume_token"]


def test_console_test_applies_overrides_and_charges_nobody(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url, temperature=0.9)
    admin = make_admin(maker, settings)
    headers = admin_headers(client, admin.name)
    body = {"dialog": DIALOG, "limit": 3, "top_k": 2, "temperature": 0.1, "model": "fake"}
    r = client.post("/admin/console_test", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["code"] == 0
    assert r.json()["content"] == "".join(upstream.deltas[:3])
    assert r.json()["consume_token"] == 40 + 3
    sent = upstream.requests[-1]["json"]
    assert sent["max_tokens"] == 3 and sent["temperature"] == 0.1
    [row] = _usage_rows(maker, admin_name=admin.name)
    assert row.user_id is None and row.status == "ok" and row.completion_tokens == 3
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(QuotaLedger)) == 0
    user = make_user(maker, settings)
    r = client.post("/admin/console_test", json=body, headers=user_headers(client, user.username))
    assert r.status_code == 401
    r = client.post("/admin/console_test", json={**body, "temperature": 7}, headers=headers)
    assert r.status_code == 422


def test_the_embedded_default_model_really_answers(client, maker, settings):
    add_default_embedded(maker)
    user = make_user(maker, settings, tokens=100_000)
    r = client.post(
        "/textModel/chat",
        json={"dialog": [{"role": "user", "content": "What colour is the sky? One word."}], "max_tokens": 16},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["content"].strip()
    assert body["model"] == "SmolLM2"
    [row] = _usage_rows(maker, user_id=user.id)
    assert row.provider == "embedded" and row.status == "ok"
    assert row.prompt_tokens > 10 and 0 < row.completion_tokens <= 16
    assert body["consume_token"] == row.prompt_tokens + row.completion_tokens
    assert balance(maker, user.id) == 100_000 - body["consume_token"]
    with maker() as s:
        assert quota.ledger_sum(s, user.id).tokens == 100_000 - body["consume_token"]
