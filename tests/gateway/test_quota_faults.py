"""Quota under faults, on a real uvicorn server: a client that goes away mid-stream pays
the prompt (it was sent upstream) and only the completion that was delivered, 50 concurrent
streams never overspend, a crashed request's reservation is left to the sweeper."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from backend.billing import quota
from backend.catalog.personas import build_messages
from backend.chat import gateway
from backend.providers import tokens
from db.models import QuotaReservation, UsageRecord
from tests.factories import make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import (
    EXAMPLES,
    SYSTEM_PROMPT,
    add_online_model,
    assert_ledger_consistent,
    balance,
    parse_like_desktop_client,
    wait_for,
)
from tests.live import live_server

DIALOG = [{"role": "user", "content": "Tell me a long story"}]


def _reservation_status(maker, user_id: str) -> str | None:
    with maker() as s:
        return s.scalar(select(QuotaReservation.status).where(QuotaReservation.user_id == user_id))


@pytest.mark.committed
def test_client_disconnect_mid_stream_settles_only_what_was_delivered(app, client, maker, settings):
    with OpenAIServer(reply="word", chunks=400, chunk_delay=0.05, prompt_tokens=50) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        headers = user_headers(client, user.username)
        received = []
        with live_server(app) as base, httpx.Client(base_url=base, timeout=10) as http:
            with http.stream(
                "POST",
                "/textModel/stream",
                json={"dialog": DIALOG, "model": "fake", "max_tokens": 500},
                headers=headers,
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    received.append(json.loads(line))
                    if len(received) == 3:
                        break
            # the response is closed: the server must notice, stop the upstream and settle
            assert wait_for(lambda: _reservation_status(maker, user.id) == "settled", what="settlement")
            assert upstream.disconnected.wait(10)
        assert upstream.streams_completed == 0
    charged = 5_000 - assert_ledger_consistent(maker, user.id)
    delivered_text = "".join(p["content"] for f in received for p in f["payload"]["choices"]["text"])
    assert delivered_text == "word " * 3
    prompt = tokens.count_tokens(build_messages(SYSTEM_PROMPT, EXAMPLES, DIALOG))
    with maker() as s:
        [row] = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).all()
    assert row.status == "cancelled" and row.prompt_tokens == prompt
    assert charged == row.prompt_tokens + row.completion_tokens
    # the prompt (sent upstream), at least what the client read, far less than the full answer
    assert 3 <= tokens.count_text_tokens(delivered_text) <= row.completion_tokens < 400


@pytest.mark.committed
def test_fifty_concurrent_streams_never_overspend(app, client, maker, settings):
    with OpenAIServer(reply="one two three four five six seven eight", chunk_delay=0.01, prompt_tokens=30) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        start = 1_000
        user = make_user(maker, settings, tokens=start)
        headers = user_headers(client, user.username)
        body = {"dialog": DIALOG, "model": "fake", "max_tokens": 40}

        async def one(http: httpx.AsyncClient) -> tuple[int, int]:
            async with http.stream("POST", "/textModel/stream", json=body, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    assert r.status_code == 402 and r.json()["code"] == "TOKEN_NOT_ENOUGH"
                    return 402, 0
                lines = [line async for line in r.aiter_lines()]
            text, left, frames = parse_like_desktop_client(iter(lines), 0)
            assert frames[-1]["header"]["code"] == 0 and text == upstream.reply_text
            return 200, -left

        async def run_all(base: str) -> list[tuple[int, int]]:
            limits = httpx.Limits(max_connections=60)
            async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
                return await asyncio.gather(*(one(http) for _ in range(50)))

        with live_server(app) as base:
            results = asyncio.run(run_all(base))
    ok = [charged for status, charged in results if status == 200]
    refused = [status for status, _ in results if status == 402]
    assert len(ok) + len(refused) == 50
    assert ok and refused  # the balance covers some of the 50, not all
    left = assert_ledger_consistent(maker, user.id)
    assert left >= 0
    assert start - left == sum(ok)  # exactly what the clients were told they paid
    assert all(c == 30 + len(upstream.deltas) for c in ok)


def test_a_crashed_request_leaves_its_reservation_to_the_sweeper(maker, settings):
    with OpenAIServer() as upstream:
        add_online_model(maker, settings, url=upstream.url)
        user = make_user(maker, settings, tokens=5_000)
        call = asyncio.run(
            gateway.start_chat(
                maker,
                settings,
                caller=gateway.Caller(user_id=user.id),
                dialog=DIALOG,
                model_name="fake",
                max_tokens=100,
            )
        )
        held = 5_000 - balance(maker, user.id)
        assert held == call.prompt_estimate + 100
        del call  # the process "dies" here: nothing settles, nothing releases
        assert upstream.requests == []
    with maker.begin() as s:
        assert quota.sweep_expired(s) == 0  # not expired yet
    later = datetime.now(UTC) + timedelta(seconds=settings.reservation_ttl_seconds + 11)
    with maker.begin() as s:
        assert quota.sweep_expired(s, now=later) == 1
    assert assert_ledger_consistent(maker, user.id) == 5_000
