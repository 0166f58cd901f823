"""Failover through the real gateway (backend/chat/gateway.py over routing.py): a model
whose three routes are real upstreams on 127.0.0.1 — one failing (HTTP 500 or connection
refused), one too slow for its timeout, one healthy — answers through the healthy one on
`/v1` and the seed endpoints, charged once; the cooldown and the 401 disabling as
connection_health and the Models page's data show them; a failure after the first token is
not retried and settles what was delivered; the per-upstream bound counts the connection a
call actually uses."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.catalog import routing
from backend.chat import gateway
from backend.chat.gateway import Caller, ChatResult, UpstreamBusy
from backend.server import create_app
from db.models import ConnectionHealth, QuotaLedger, UsageRecord
from tests.factories import admin_headers, make_admin, make_settings, make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import (
    add_connection,
    add_online_model,
    assert_ledger_consistent,
    balance,
    parse_like_desktop_client,
)

pytestmark = pytest.mark.committed  # health is written beside the stream, on its own connection

DIALOG = [{"role": "user", "content": "Hello there"}]
START = 10_000


@pytest.fixture
def policy(settings, tmp_path):
    """Two failures in a row cool a connection down for an hour (no cooldown ends mid-test)."""
    return make_settings(
        settings.database_url,
        tmp_path,
        connection_failure_threshold=2,
        connection_cooldown_seconds=3600,
        failover_max_attempts=3,
    )


def routed_model(maker, settings, routes: list[tuple[str, str, int, int, str | None]], name="multi") -> dict[str, int]:
    """A model whose own connection is unreachable, with routes (url, name, priority, timeout,
    key); returns the connection ids by name."""
    model_id = add_online_model(maker, settings, url=closed_port_url(), name=name)
    ids = {
        conn_name: add_connection(maker, settings, url=url, name=conn_name, timeout=timeout, api_key=key)
        for url, conn_name, _, timeout, key in routes
    }
    with maker.begin() as s:
        for _, conn_name, priority, _, _ in routes:
            routing.set_route(s, model_id=model_id, connection_id=ids[conn_name], priority=priority, actor="test")
    return ids


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def health_states(maker) -> dict[str, dict]:
    with maker() as s:
        return {h["name"]: h for h in routing.health(s)}


def ledger_rows(maker, user_id: str) -> int:
    with maker() as s:
        return len(s.scalars(select(QuotaLedger.id).where(QuotaLedger.user_id == user_id)).all())


def settle_rows(maker, user_id: str) -> list[QuotaLedger]:
    with maker() as s:
        return list(
            s.scalars(
                select(QuotaLedger)
                .where(QuotaLedger.user_id == user_id, QuotaLedger.kind == "settle")
                .order_by(QuotaLedger.id)
            )
        )


def usage_rows(maker, user_id: str) -> list[UsageRecord]:
    with maker() as s:
        return list(s.scalars(select(UsageRecord).where(UsageRecord.user_id == user_id).order_by(UsageRecord.id)))


def v1_key(client, headers) -> dict[str, str]:
    r = client.post("/user/api_keys", json={}, headers=headers)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def test_v1_and_seed_requests_fail_over_to_the_healthy_connection_charged_once(maker, policy):
    with (
        OpenAIServer(fail_status=500) as failing,
        OpenAIServer(delay_before_first_byte=3.0) as slow,
        OpenAIServer(reply="the healthy one answers", prompt_tokens=17) as healthy,
    ):
        ids = routed_model(
            maker,
            policy,
            [
                (failing.url, "failing", 30, 5, None),
                (slow.url, "slow", 20, 1, None),
                (healthy.url, "healthy", 10, 5, None),
            ],
        )
        user = make_user(maker, policy, tokens=START)
        make_admin(maker, policy, name="ops")
        with TestClient(create_app(policy, playground=False)) as client:
            headers = user_headers(client, user.username)
            # 1. /v1: the failing and the slow connection are tried first (priority), then the healthy one
            r = client.post(
                "/v1/chat/completions",
                json={"model": "multi", "messages": DIALOG},
                headers=v1_key(client, headers),
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == healthy.reply_text
            spent = [r.json()["usage"]["total_tokens"]]
            assert r.json()["usage"]["prompt_tokens"] == 17
            assert (len(failing.requests), len(slow.requests), len(healthy.requests)) == (1, 1, 1)
            states = health_states(maker)
            assert [states[n]["state"] for n in ("failing", "slow", "healthy")] == ["ok", "ok", "ok"]
            assert states["failing"]["consecutive_failures"] == 1

            # 2. the seed stream: the same way again; the second failure in a row cools both down
            with client.stream(
                "POST", "/textModel/stream", json={"dialog": DIALOG, "model": "multi"}, headers=headers
            ) as r:
                assert r.status_code == 200
                text, left, frames = parse_like_desktop_client(r.iter_lines(), 0)
            assert text == healthy.reply_text and frames[-1]["header"]["code"] == 0
            spent.append(-left)
            assert (len(failing.requests), len(slow.requests), len(healthy.requests)) == (2, 2, 2)
            with maker() as s:
                cooling = {h.connection_id for h in s.scalars(select(ConnectionHealth)) if h.cooldown_until}
            assert cooling == {ids["failing"], ids["slow"]}

            # 3. the seed chat: cooling-down connections go last, so the healthy one alone is asked
            r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "multi"}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["content"] == healthy.reply_text
            spent.append(r.json()["consume_token"])
            assert (len(failing.requests), len(slow.requests), len(healthy.requests)) == (2, 2, 3)

            # the Models page's data (the admin API serves the same service call)
            page = client.get("/admin/connections/health", headers=admin_headers(client, "ops")).json()["data"]
    by_name = {h["name"]: h for h in page}
    assert [by_name[n]["state"] for n in ("failing", "slow", "healthy")] == ["cooldown", "cooldown", "ok"]
    assert (by_name["failing"]["requests_1h"], by_name["failing"]["errors_1h"]) == (2, 2)
    assert (by_name["slow"]["requests_1h"], by_name["slow"]["errors_1h"]) == (2, 2)
    assert (by_name["healthy"]["requests_1h"], by_name["healthy"]["errors_1h"]) == (3, 0)
    assert by_name["healthy"]["p50_ms_1h"] is not None and by_name["failing"]["p50_ms_1h"] is None

    # charged once per request, by the connection that served it
    assert assert_ledger_consistent(maker, user.id) == START - sum(spent)
    settles = settle_rows(maker, user.id)
    assert len(settles) == 3 and {row.connection_id for row in settles} == {ids["healthy"]}
    assert [(u.status, u.connection_id) for u in usage_rows(maker, user.id)] == [("ok", ids["healthy"])] * 3


def test_refused_and_401_connections_are_passed_over_and_the_401_one_disabled(maker, policy):
    with (
        OpenAIServer(api_key="not-the-key-we-hold") as wrong_key,
        OpenAIServer(reply="backup speaking", prompt_tokens=9) as healthy,
    ):
        refused = closed_port_url()
        ids = routed_model(
            maker,
            policy,
            [
                (refused, "refused", 30, 5, None),
                (wrong_key.url, "wrong-key", 20, 5, None),
                (healthy.url, "healthy", 10, 5, None),
            ],
        )
        user = make_user(maker, policy, tokens=START)
        with TestClient(create_app(policy, playground=False)) as client:
            headers = user_headers(client, user.username)
            r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "multi"}, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["content"] == healthy.reply_text
            states = health_states(maker)
            assert states["wrong-key"]["state"] == "disabled"
            assert "401" in states["wrong-key"]["reason"] and "not-the-key" not in states["wrong-key"]["reason"]
            assert (states["refused"]["state"], states["refused"]["consecutive_failures"]) == ("ok", 1)

            # a disabled connection is never tried again; the refused one is, until it cools down
            r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "multi"}, headers=headers)
            assert r.status_code == 200, r.text
            assert len(wrong_key.requests) == 1 and len(healthy.requests) == 2
            assert health_states(maker)["refused"]["state"] == "cooldown"
    assert assert_ledger_consistent(maker, user.id) == START - 2 * r.json()["consume_token"]
    assert [u.connection_id for u in usage_rows(maker, user.id)] == [ids["healthy"]] * 2


def test_every_connection_failing_charges_nothing_and_names_the_last_cause(maker, policy):
    with OpenAIServer(fail_status=503) as one, OpenAIServer(fail_status=500) as two:
        routed_model(maker, policy, [(one.url, "one", 10, 5, None), (two.url, "two", 0, 5, None)])
        user = make_user(maker, policy, tokens=START)
        with TestClient(create_app(policy, playground=False)) as client:
            headers = user_headers(client, user.username)
            r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "multi"}, headers=headers)
        assert r.status_code == 502 and r.json()["code"] == "MODEL_ERROR"
        assert "HTTP 500" in r.json()["msg"]  # the last connection tried
        assert (len(one.requests), len(two.requests)) == (1, 1)
    assert assert_ledger_consistent(maker, user.id) == START
    [row] = usage_rows(maker, user.id)
    assert row.status == "error"


def test_a_model_whose_connections_are_all_disabled_is_refused_before_reserving_until_re_enabled(maker, policy):
    with OpenAIServer(api_key="not-the-key-we-hold") as wrong_key:
        ids = routed_model(maker, policy, [(wrong_key.url, "wrong-key", 0, 5, None)])
        user = make_user(maker, policy, tokens=START)
        make_admin(maker, policy, name="ops")
        with TestClient(create_app(policy, playground=False)) as client:
            headers = user_headers(client, user.username)
            ask = {"dialog": DIALOG, "model": "multi"}
            r = client.post("/textModel/chat", json=ask, headers=headers)
            assert r.status_code == 502 and "HTTP 401" in r.json()["msg"]
            ledger = ledger_rows(maker, user.id)
            r = client.post("/textModel/chat", json=ask, headers=headers)
            assert r.status_code == 502 and "disabled" in r.json()["msg"]
            assert len(wrong_key.requests) == 1  # refused when planned: not asked, nothing reserved
            assert ledger_rows(maker, user.id) == ledger
            ops = admin_headers(client, "ops")
            assert client.post(f"/admin/connections/{ids['wrong-key']}/enable", headers=ops).json()["code"] == 0
            r = client.post("/textModel/chat", json=ask, headers=headers)
            assert r.status_code == 502 and "HTTP 401" in r.json()["msg"]  # tried again, disabled again
            assert len(wrong_key.requests) == 2
    assert assert_ledger_consistent(maker, user.id) == START


def test_a_failure_after_the_first_token_is_not_retried_and_settles_what_was_delivered(maker, policy):
    with (
        OpenAIServer(reply="one two three four five six", fail_after_chunks=2) as dying,
        OpenAIServer(reply="never asked") as healthy,
    ):
        ids = routed_model(maker, policy, [(dying.url, "dying", 10, 5, None), (healthy.url, "healthy", 0, 5, None)])
        user = make_user(maker, policy, tokens=START)
        with TestClient(create_app(policy, playground=False)) as client:
            headers = user_headers(client, user.username)
            with client.stream(
                "POST", "/textModel/stream", json={"dialog": DIALOG, "model": "multi"}, headers=headers
            ) as r:
                assert r.status_code == 200
                text, left, frames = parse_like_desktop_client(r.iter_lines(), START)
        assert healthy.requests == []
    assert text == "one two "
    last = frames[-1]
    assert last["header"]["status"] == 2 and "MODEL_ERROR" in last["header"]["message"]
    charged = last["payload"]["usage"]["text"]["total_tokens"]
    assert 0 < charged < 20  # the delivered completion, no prompt
    assert assert_ledger_consistent(maker, user.id) == left == START - charged
    [row] = usage_rows(maker, user.id)
    assert (row.status, row.connection_id, row.completion_tokens) == ("error", ids["dying"], charged)


def test_the_upstream_bound_counts_the_connection_a_call_uses(maker, settings, tmp_path):
    bounded = make_settings(settings.database_url, tmp_path, upstream_concurrency=1)
    with (
        OpenAIServer(fail_status=500) as failing,
        OpenAIServer(reply="a b c d e f", chunk_delay=0.05) as first,
        OpenAIServer(reply="g h i j k l", chunk_delay=0.05) as second,
    ):
        ids = routed_model(
            maker,
            bounded,
            [
                (failing.url, "failing", 30, 5, None),
                (first.url, "first", 20, 5, None),
                (second.url, "second", 10, 5, None),
            ],
        )
        # another model over the same two healthy upstreams (other rows): the bound is the upstream's
        routed_model(
            maker, bounded, [(first.url, "first-b", 20, 5, None), (second.url, "second-b", 10, 5, None)], name="pair"
        )
        user = make_user(maker, bounded, tokens=START)
        caller = Caller(user_id=user.id, academy=user.academy)
        keys: dict[str, tuple] = {}

        async def scenario() -> list[str]:
            a = await gateway.start_chat(maker, bounded, caller=caller, dialog=DIALOG, model_name="multi")
            await a.prime()  # failed over from "failing" to "first": the slot moved with it
            assert a.model.connection_id == ids["first"]
            keys["first"] = gateway.connection_key(a.model)
            keys["failing"] = ("openai", keys["first"][1].replace(str(first.port), str(failing.port)))
            assert [gateway.upstream_slots.in_flight(keys[k]) for k in ("failing", "first")] == [0, 1]
            b = await gateway.start_chat(maker, bounded, caller=caller, dialog=DIALOG, model_name="multi")
            await b.prime()  # "failing" fails again, "first" is full (skipped, not a failure): "second"
            assert b.model.connection_id == ids["second"]
            keys["second"] = gateway.connection_key(b.model)
            with pytest.raises(UpstreamBusy):  # both upstreams of "pair" carry their one call: nothing reserved
                await gateway.start_chat(maker, bounded, caller=caller, dialog=DIALOG, model_name="pair")
            c = await gateway.start_chat(maker, bounded, caller=caller, dialog=DIALOG, model_name="multi")
            with pytest.raises(gateway.ChatFailed) as failed:  # "failing" fails, the others are full
                await c.prime()
            assert "HTTP 500" in failed.value.message and failed.value.charged_tokens == 0
            answers = []
            for call in (a, b):
                async for event in call:
                    if isinstance(event, ChatResult):
                        answers.append(event.content)
            return answers

        answers = asyncio.run(scenario())
        assert answers == [first.reply_text, second.reply_text]
        assert len(failing.requests) == 3 and len(first.requests) == 1 and len(second.requests) == 1
    assert [gateway.upstream_slots.in_flight(k) for k in keys.values()] == [0, 0, 0]
    assert assert_ledger_consistent(maker, user.id) < START
    assert [u.status for u in usage_rows(maker, user.id)] == ["error", "ok", "ok"]
    with maker() as s:
        assert health_states(maker)["failing"]["consecutive_failures"] == 3
        assert s.get(ConnectionHealth, ids["first"]) is None  # a full connection is not a failing one


def test_a_model_without_routes_uses_its_own_connection_as_before(maker, policy):
    with OpenAIServer(reply="own connection", prompt_tokens=5) as own:
        add_online_model(maker, policy, url=own.url, name="single")
        user = make_user(maker, policy, tokens=START)
        with TestClient(create_app(policy, playground=False)) as client:
            r = client.post(
                "/textModel/chat",
                json={"dialog": DIALOG, "model": "single"},
                headers=user_headers(client, user.username),
            )
        assert r.status_code == 200 and r.json()["content"] == own.reply_text
    with maker() as s:
        assert s.scalars(select(ConnectionHealth)).all() == []  # no failover, no health rows
    [row] = usage_rows(maker, user.id)
    assert row.connection_id is not None and settle_rows(maker, user.id)[0].connection_id == row.connection_id
    assert balance(maker, user.id) == START - r.json()["consume_token"]


def test_a_call_cancelled_after_failing_over_owes_the_prompt_and_what_was_delivered(maker, policy):
    with (
        OpenAIServer(fail_status=500) as failing,
        OpenAIServer(reply="a b c d e f g h", chunk_delay=0.05, prompt_tokens=40) as healthy,
    ):
        ids = routed_model(maker, policy, [(failing.url, "failing", 10, 5, None), (healthy.url, "healthy", 0, 5, None)])
        user = make_user(maker, policy, tokens=START)
        caller = Caller(user_id=user.id, academy=user.academy)

        async def scenario() -> int:
            call = await gateway.start_chat(maker, policy, caller=caller, dialog=DIALOG, model_name="multi")
            first = await call.__anext__()  # the first token, from the healthy connection
            assert isinstance(first, str) and call.model.connection_id == ids["healthy"]
            await call.__anext__()  # the consumer took the first one: delivered
            await call.aclose()
            return call.prompt_estimate

        prompt = asyncio.run(scenario())
    [row] = usage_rows(maker, user.id)
    assert (row.status, row.connection_id, row.prompt_tokens) == ("cancelled", ids["healthy"], prompt)
    assert row.completion_tokens >= 1
    assert assert_ledger_consistent(maker, user.id) == START - prompt - row.completion_tokens
