"""Several connections per model (backend/catalog/routing.py): the order (priority groups,
weights, disabled and cooling-down connections), the health transitions shared through the
database, and failover over real upstreams on 127.0.0.1 — one failing, one slow, one healthy —
with no retry once a token has been delivered."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from backend.catalog import routing
from backend.providers import registry
from backend.providers.base import ChatRequest, ProviderError, Usage
from db.models import ConnectionHealth, ModelRoute
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import UPSTREAM_KEY, add_connection, add_online_model

pytestmark = pytest.mark.committed  # health is written beside the stream, on its own connection

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
MESSAGES = [{"role": "user", "content": "Say hello"}]


def route(cid, priority=0, weight=1, cooldown=None, disabled=None) -> routing.Route:
    return routing.Route(cid, priority, weight, cooldown, disabled)


def test_order_takes_the_highest_priority_group_weighted_at_random():
    rng = random.Random(7)
    routes = [route(1, 10, 3), route(2, 10, 1), route(3, 5, 100), route(4, 10, 1, disabled="HTTP 401: bad key")]
    firsts = Counter(routing.order(routes, NOW, rng)[0].connection_id for _ in range(4000))
    assert set(firsts) == {1, 2}  # never the lower priority first, never the disabled one
    assert 0.70 < firsts[1] / 4000 < 0.80  # weight 3 : 1
    for _ in range(50):
        ordered = [r.connection_id for r in routing.order(routes, NOW, rng)]
        assert sorted(ordered[:2]) == [1, 2] and ordered[2:] == [3]


def test_cooling_down_connections_go_last_soonest_first():
    routes = [
        route(1, 10, cooldown=NOW + timedelta(seconds=50)),
        route(2, 10, cooldown=NOW + timedelta(seconds=10)),
        route(3, 0),
        route(4, 10, cooldown=NOW - timedelta(seconds=1)),  # its cooldown is over
    ]
    assert [r.connection_id for r in routing.order(routes, NOW, random.Random(1))] == [4, 3, 2, 1]


def connection(maker, settings, url: str, name: str, timeout: int = 5) -> int:
    return add_connection(maker, settings, url=url, name=name, timeout=timeout)


def health_of(maker, cid: int) -> ConnectionHealth | None:
    with maker() as s:
        return s.get(ConnectionHealth, cid)


def test_failures_cool_down_then_half_open_then_reset_and_401_disables(maker, settings):
    cid = connection(maker, settings, "http://127.0.0.1:9/v1", "flaky")

    def fail(status=500, at=NOW):
        with maker.begin() as s:
            return routing.record_failure(
                s, cid, status=status, reason="boom", threshold=3, cooldown_seconds=30, now=at
            )

    assert [fail(), fail()] == ["counted", "counted"]
    assert fail() == "cooldown"
    assert health_of(maker, cid).cooldown_until == NOW + timedelta(seconds=30)
    later = NOW + timedelta(seconds=31)
    assert fail(at=later) == "cooldown"  # half-open: one more failure after the cooldown cools it again
    with maker.begin() as s:
        routing.record_success(s, cid, latency_ms=12, now=later)
    h = health_of(maker, cid)
    assert (h.consecutive_failures, h.cooldown_until) == (0, None)
    assert fail(401) == "disabled"
    assert health_of(maker, cid).disabled_reason == "HTTP 401: boom"
    with maker() as s:
        state = {h["connection_id"]: h for h in routing.health(s, now=NOW + timedelta(minutes=1))}[cid]
    assert state["state"] == "disabled" and state["reason"] == "HTTP 401: boom"
    assert (state["requests_1h"], state["errors_1h"], state["p50_ms_1h"]) == (6, 5, 12)
    with maker.begin() as s:
        routing.enable(s, cid, actor="test")
    assert health_of(maker, cid).disabled_reason is None


def collect(stream, into: list | None = None) -> list:
    """Every item of an async stream, in one event loop (`into` keeps what came before a failure)."""
    items = [] if into is None else into

    async def drain() -> None:
        async for item in stream:
            items.append(item)

    asyncio.run(drain())
    return items


def open_with(settings, urls: dict[int, str], timeouts: dict[int, float]):
    def open_stream(r: routing.Route):
        provider = registry.chat_provider(
            "openai", base_url=urls[r.connection_id], api_key=UPSTREAM_KEY, timeout=timeouts[r.connection_id],
            settings=settings,
        )  # fmt: skip
        return provider.stream(
            ChatRequest(messages=MESSAGES, model="fake-model", max_tokens=32, timeout=timeouts[r.connection_id])
        )

    return open_stream


def test_failing_and_slow_upstreams_fail_over_to_the_healthy_one(maker, settings):
    with (
        OpenAIServer(fail_status=503) as failing,
        OpenAIServer(delay_before_first_byte=3.0) as slow,
        OpenAIServer(reply="healthy answer here") as healthy,
    ):
        ids = {
            "failing": connection(maker, settings, failing.url, "failing"),
            "slow": connection(maker, settings, slow.url, "slow", timeout=1),
            "healthy": connection(maker, settings, healthy.url, "healthy"),
        }
        model_id = add_online_model(maker, settings, url=healthy.url, name="multi")
        with maker.begin() as s:
            for name, priority in (("failing", 30), ("slow", 20), ("healthy", 10)):
                routing.set_route(s, model_id=model_id, connection_id=ids[name], priority=priority, actor="test")
        with maker() as s:
            routes = routing.routes_for(s, model_id)
        urls = {ids["failing"]: failing.url, ids["slow"]: slow.url, ids["healthy"]: healthy.url}
        timeouts = {ids["failing"]: 5.0, ids["slow"]: 1.0, ids["healthy"]: 5.0}
        attempts: list[routing.Attempt] = []
        items = collect(
            routing.failover_stream(
                maker,
                routes,
                open_with(settings, urls, timeouts),
                max_attempts=3,
                threshold=2,
                cooldown_seconds=60,
                attempts=attempts,
            )  # fmt: skip
        )
        text = "".join(i for i in items if isinstance(i, str))
        assert text == healthy.reply_text
        assert sum(isinstance(i, Usage) for i in items) == 1  # one answer, one usage: charged once
        assert [(a.connection_id, a.ok) for a in attempts] == [
            (ids["failing"], False),
            (ids["slow"], False),
            (ids["healthy"], True),
        ]
        assert len(healthy.requests) == 1
        # bounded: with max_attempts=2 the healthy one is never reached
        with pytest.raises(ProviderError):
            collect(
                routing.failover_stream(
                    maker,
                    routes,
                    open_with(settings, urls, timeouts),
                    max_attempts=2,
                    threshold=2,
                    cooldown_seconds=60,
                )  # fmt: skip
            )
        assert len(healthy.requests) == 1
        # the failing and the slow connection failed twice in a row: cooling down, shared in the DB
        with maker() as s:
            routes = routing.routes_for(s, model_id)
        cooling = {r.connection_id for r in routes if r.cooling(datetime.now(UTC))}
        assert cooling == {ids["failing"], ids["slow"]}
        assert [r.connection_id for r in routing.order(routes, datetime.now(UTC))][0] == ids["healthy"]


def test_a_failure_after_the_first_token_is_not_retried(maker, settings):
    with OpenAIServer(chunks=6, fail_after_chunks=2) as dying, OpenAIServer(reply="never asked") as healthy:
        a = connection(maker, settings, dying.url, "dying")
        b = connection(maker, settings, healthy.url, "backup")
        routes = [route(a, 10), route(b, 0)]
        got: list = []
        attempts: list[routing.Attempt] = []
        with pytest.raises(ProviderError):
            collect(
                routing.failover_stream(
                    maker, routes, open_with(settings, {a: dying.url, b: healthy.url}, {a: 5.0, b: 5.0}),
                    max_attempts=3, threshold=3, cooldown_seconds=60, attempts=attempts,
                ),
                into=got,
            )  # fmt: skip
        assert "".join(g for g in got if isinstance(g, str)) == "".join(dying.deltas[:2])  # the delivered part
        assert [(x.connection_id, x.ok) for x in attempts] == [(a, True)]
        assert healthy.requests == []


def test_routes_are_edited_and_audited(maker, settings):
    model_id = add_online_model(maker, settings, url="http://127.0.0.1:9/v1", name="m")
    cid = connection(maker, settings, "http://127.0.0.1:9/v1", "second")
    with maker.begin() as s:
        routing.set_route(s, model_id=model_id, connection_id=cid, priority=5, weight=2, actor="test")
        routing.set_route(s, model_id=model_id, connection_id=cid, priority=7, weight=3, actor="test")
    with maker() as s:
        rows = list(s.scalars(select(ModelRoute).where(ModelRoute.model_id == model_id)))
    assert [(r.connection_id, r.priority, r.weight) for r in rows] == [(cid, 7, 3)]
    with maker.begin() as s:
        routing.remove_route(s, model_id=model_id, connection_id=cid, actor="test")
        assert routing.routes_for(s, model_id) == []
