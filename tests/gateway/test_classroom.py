"""The gateway at classroom scale, on a real uvicorn server and every database: hundreds of
concurrent streams never overspend, the per-upstream bound answers 503 with Retry-After and
charges nothing, a client that leaves a non-streaming request pays only for what the upstream
delivered, and a cancelled stream pays for its prompt."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from backend.catalog.personas import build_messages
from backend.providers import tokens
from db.models import QuotaLedger, QuotaReservation, UsageRecord
from tests.factories import make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import (
    EXAMPLES,
    SYSTEM_PROMPT,
    add_online_model,
    assert_ledger_consistent,
    parse_like_desktop_client,
    wait_for,
)
from tests.live import live_server

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

DIALOG = [{"role": "user", "content": "Explain the water cycle"}]


def _ledger_kinds(maker, user_id: str) -> list[str]:
    with maker() as s:
        return list(
            s.scalars(select(QuotaLedger.kind).where(QuotaLedger.user_id == user_id, QuotaLedger.kind != "grant"))
        )


def _reservation_statuses(maker, user_id: str) -> list[str]:
    with maker() as s:
        return list(s.scalars(select(QuotaReservation.status).where(QuotaReservation.user_id == user_id)))


def test_three_hundred_concurrent_streams_against_a_balance_that_covers_some(app, client, maker, settings):
    streams = 300
    with OpenAIServer("one two three four five six", chunk_delay=0.005, prompt_tokens=30) as upstream:
        add_online_model(maker, settings, url=upstream.url, examples=[])
        per_chat = 30 + len(upstream.deltas)
        start = 40 * per_chat  # far less than 300 chats cost, more than one reservation
        user = make_user(maker, settings, tokens=start)
        headers = user_headers(client, user.username)
        body = {"dialog": DIALOG, "model": "fake", "max_tokens": 20}

        async def one(http: httpx.AsyncClient) -> tuple[int, int]:
            async with http.stream("POST", "/textModel/stream", json=body, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    assert r.status_code == 402 and r.json()["code"] == "TOKEN_NOT_ENOUGH", r.text
                    return 402, 0
                lines = [line async for line in r.aiter_lines()]
            text, left, frames = parse_like_desktop_client(iter(lines), 0)
            assert frames[-1]["header"]["code"] == 0 and text == upstream.reply_text
            return 200, -left

        async def run_all(base: str) -> list[tuple[int, int]]:
            limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
            async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
                return await asyncio.gather(*(one(http) for _ in range(streams)))

        with live_server(app) as base:
            results = asyncio.run(run_all(base))
        upstream_calls = len(upstream.requests)
    ok = [charged for status, charged in results if status == 200]
    refused = [status for status, _ in results if status == 402]
    assert len(ok) + len(refused) == streams
    assert ok and refused
    assert upstream_calls == len(ok)  # every refusal came before any upstream call
    left = assert_ledger_consistent(maker, user.id)  # never below zero, equal to the ledger
    assert start - left == sum(ok) and all(c == per_chat for c in ok)
    assert len(ok) <= start // per_chat


class HeldOpenAIServer(OpenAIServer):
    """The fake upstream, holding every chat until `release` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.release = threading.Event()
        self.arrived = 0
        super().__init__(*args, **kwargs)

    def handle(self, handler, method, body) -> None:  # noqa: ANN001 - the fake's signature
        if method == "POST":
            with self._lock:
                self.arrived += 1
            self.release.wait(60)
        super().handle(handler, method, body)


@pytest.mark.parametrize("family", ["seed000", "openai"])
def test_the_upstream_bound_answers_503_with_retry_after_and_charges_nothing(app, client, maker, settings, family):
    app.state.settings = settings.model_copy(update={"upstream_concurrency": 2})
    with HeldOpenAIServer("short answer", prompt_tokens=10) as upstream:
        add_online_model(maker, settings, url=upstream.url, examples=[])
        start = 10_000
        user = make_user(maker, settings, tokens=start)
        headers = user_headers(client, user.username)
        if family == "openai":
            key = client.post("/user/api_keys", json={}, headers=headers).json()["key"]
            path, headers = "/v1/chat/completions", {"Authorization": f"Bearer {key}"}
            body: dict[str, Any] = {"model": "fake", "messages": DIALOG, "stream": True}
        else:
            path, body = "/textModel/stream", {"dialog": DIALOG, "model": "fake", "max_tokens": 20}

        async def one(http: httpx.AsyncClient) -> httpx.Response:
            async with http.stream("POST", path, json=body, headers=headers) as r:
                await r.aread()
                return r

        async def run_all(base: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                pending = {asyncio.ensure_future(one(http)) for _ in range(10)}
                done: list[httpx.Response] = []
                while pending:
                    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    done += [f.result() for f in finished]
                    if len(done) == 8:  # the surplus has been answered: let the two admitted ones finish
                        upstream.release.set()
                return done

        with live_server(app) as base:
            answers = asyncio.run(run_all(base))
    busy = [r for r in answers if r.status_code == 503]
    served = [r for r in answers if r.status_code == 200]
    assert len(busy) == 8 and len(served) == 2 and upstream.arrived == 2
    for r in busy:
        assert r.headers["retry-after"] == "1"
        if family == "openai":
            assert r.json()["error"]["code"] == "UPSTREAM_BUSY"
        else:
            assert r.json()["code"] == "UPSTREAM_BUSY"
    # the two admitted chats reserved and settled; the eight refused ones touched nothing
    assert _ledger_kinds(maker, user.id).count("reserve") == 2
    left = assert_ledger_consistent(maker, user.id)
    assert start - left == 2 * (10 + len(upstream.deltas))


def _post_and_leave(base: str, path: str, body: dict, headers: dict, upstream: OpenAIServer) -> None:
    """Send a non-streaming request on a raw socket and close it once the upstream is answering."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(payload)}", "", ""]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("\r\n".join(head).encode() + payload)
        assert upstream.first_chunk_sent.wait(15)


@pytest.mark.parametrize("path", ["/textModel/chat", "/v1/chat/completions"])
def test_a_client_that_leaves_a_non_streaming_request_pays_only_what_was_delivered(app, client, maker, settings, path):
    with OpenAIServer("word", chunks=400, chunk_delay=0.05, prompt_tokens=50) as upstream:
        add_online_model(maker, settings, url=upstream.url)
        start = 5_000
        user = make_user(maker, settings, tokens=start)
        headers = user_headers(client, user.username)
        if path.startswith("/v1"):
            key = client.post("/user/api_keys", json={}, headers=headers).json()["key"]
            headers = {"Authorization": f"Bearer {key}"}
            body: dict[str, Any] = {"model": "fake", "messages": DIALOG, "max_tokens": 500}
        else:
            body = {"dialog": DIALOG, "model": "fake", "max_tokens": 500}
        with live_server(app) as base:
            _post_and_leave(base, path, body, headers, upstream)
            # the server notices, stops the upstream and settles as cancelled
            assert wait_for(lambda: _reservation_statuses(maker, user.id) == ["settled"], what="settlement")
            assert upstream.disconnected.wait(10)
        assert upstream.streams_completed == 0
    charged = start - assert_ledger_consistent(maker, user.id)
    prompt = tokens.count_tokens(build_messages(SYSTEM_PROMPT, EXAMPLES, DIALOG))
    with maker() as s:
        [row] = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).all()
    assert row.status == "cancelled" and row.prompt_tokens == prompt
    # the prompt, and the completion the upstream had delivered: far less than the full answer
    assert charged == row.prompt_tokens + row.completion_tokens and 1 <= row.completion_tokens < 400


def test_a_cancelled_stream_pays_for_its_prompt(app, client, maker, settings):
    long_turn = " ".join(f"fact{n % 97} about rivers" for n in range(1_500))  # a prompt of thousands of tokens
    dialog = [{"role": "user", "content": long_turn}]
    with OpenAIServer("drop", chunks=300, chunk_delay=0.05) as upstream:
        add_online_model(maker, settings, url=upstream.url, examples=[])
        start = 50_000
        user = make_user(maker, settings, tokens=start)
        key = client.post("/user/api_keys", json={}, headers=user_headers(client, user.username)).json()["key"]
        with live_server(app) as base:
            sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
            stream = sdk.chat.completions.create(model="fake", messages=dialog, stream=True, max_tokens=400)
            pieces = []
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 2:
                        break
            stream.close()
            assert wait_for(lambda: _reservation_statuses(maker, user.id) == ["settled"], what="settlement")
        assert upstream.streams_completed == 0
    prompt = tokens.count_tokens(build_messages(SYSTEM_PROMPT, [], dialog))
    assert prompt > 5_000
    charged = start - assert_ledger_consistent(maker, user.id)
    with maker() as s:
        row = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).one()
        settle_rows = s.scalar(
            select(func.count())
            .select_from(QuotaLedger)
            .where(QuotaLedger.user_id == user.id, QuotaLedger.kind == "settle")
        )
    assert row.status == "cancelled" and row.prompt_tokens == prompt and settle_rows == 1
    assert charged == prompt + row.completion_tokens
    assert tokens.count_text_tokens("".join(pieces[:1])) <= row.completion_tokens < 300
