"""Model prices (backend/billing/pricing.py) through the real gateway and a real upstream on
127.0.0.1: the reservation and the settlement at non-unit prices, a price change between
reserve and settle, consume_token = what the user paid, /v1 usage = raw tokens, the ledger
rows carrying raw tokens and the price, ledger = balance."""

from __future__ import annotations

import asyncio
import math

import pytest
from sqlalchemy import select

from backend.accounts import apikeys
from backend.billing import pricing
from backend.catalog import registry as model_registry
from backend.catalog.personas import build_messages
from backend.chat import gateway
from backend.chat.gateway import Caller
from db.models import AuditLog, QuotaLedger
from tests.factories import make_user, super_admin_headers, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model, assert_ledger_consistent, balance

DIALOG = [{"role": "user", "content": "Say hello"}]
PROMPT = 40


@pytest.fixture
def upstream():
    with OpenAIServer(reply="Hello there from upstream", prompt_tokens=PROMPT) as server:
        yield server


def ledger(maker, user_id: str, kind: str) -> list[QuotaLedger]:
    with maker() as s:
        return list(s.scalars(select(QuotaLedger).where(QuotaLedger.user_id == user_id, QuotaLedger.kind == kind)))


def estimate(maker, settings) -> int:
    """The prompt tokens the gateway reserves for DIALOG on model "fake" (its own count)."""
    with maker() as s:
        model = model_registry.resolve(s, settings, name="fake", user_id=None, admin=True)
    provider = model_registry.open_provider(model, settings)
    return int(provider.count_tokens(build_messages(model.system, model.examples, DIALOG)))


def set_price(maker, model_id: int, prompt: float, completion: float) -> None:
    with maker.begin() as s:
        pricing.set_model_price(s, model_id, prompt=prompt, completion=completion, actor="test")


def test_price_arithmetic_is_decimal_and_rounds_up():
    tenth = pricing.Price(0.1, 0.1)
    assert pricing.reserve_amount(tenth, 10, 0) == 1  # 0.1 × 10 is 1, not 1.0000000000000002 → 2
    assert pricing.reserve_amount(tenth, 10, 1) == 2  # 1.1 → 2
    assert pricing.charge(pricing.Price(15, 60), pricing.Tokens(3, 2)) == 165
    assert pricing.charge(pricing.Price(0.3, 0.7), pricing.Tokens(1, 1)) == 1
    assert pricing.charge(pricing.UNIT, pricing.Tokens(0, 0)) == 0
    assert pricing.units(2, 1) == 2 and pricing.units(3, 0.5) == 2 and pricing.units(0, 9) == 0


def test_chat_reserves_and_settles_at_the_models_price(client, maker, settings, upstream):
    model_id = add_online_model(maker, settings, url=upstream.url)
    set_price(maker, model_id, 15, 60)
    user = make_user(maker, settings, tokens=1_000_000)
    r = client.post(
        "/textModel/chat",
        json={"dialog": DIALOG, "model": "fake", "max_tokens": 100},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    completion = len(upstream.deltas)
    paid = PROMPT * 15 + completion * 60
    assert r.json()["consume_token"] == paid  # what the user paid
    assert balance(maker, user.id) == 1_000_000 - paid
    (reserve,) = ledger(maker, user.id, "reserve")
    (settle,) = ledger(maker, user.id, "settle")
    assert reserve.delta_tokens == -(estimate(maker, settings) * 15 + 100 * 60)
    assert (reserve.prompt_price, reserve.completion_price) == (15, 60)
    assert (settle.prompt_tokens, settle.completion_tokens) == (PROMPT, completion)  # raw tokens
    assert (settle.prompt_price, settle.completion_price) == (15, 60)
    assert_ledger_consistent(maker, user.id)


def test_a_price_change_between_reserve_and_settle_changes_nothing(maker, settings, upstream):
    model_id = add_online_model(maker, settings, url=upstream.url)
    set_price(maker, model_id, 2, 3)
    user = make_user(maker, settings, tokens=100_000)
    caller = Caller(user_id=user.id, academy="CS")
    completion = len(upstream.deltas)

    async def scenario() -> None:
        call = await gateway.start_chat(maker, settings, caller=caller, dialog=DIALOG, model_name="fake", max_tokens=50)
        held = 100_000 - balance(maker, user.id)
        assert held == estimate(maker, settings) * 2 + 50 * 3
        set_price(maker, model_id, 100, 100)  # the admin changes the price while the chat runs
        result = await call.run()
        assert result.charged_tokens == PROMPT * 2 + completion * 3  # the price it reserved with
        assert balance(maker, user.id) == 100_000 - result.charged_tokens
        assert_ledger_consistent(maker, user.id)
        # the next chat pays the new price
        after = balance(maker, user.id)
        second = await gateway.chat(maker, settings, caller=caller, dialog=DIALOG, model_name="fake", max_tokens=50)
        assert second.charged_tokens == PROMPT * 100 + completion * 100
        assert balance(maker, user.id) == after - second.charged_tokens
        assert_ledger_consistent(maker, user.id)

    asyncio.run(scenario())


def test_too_little_quota_for_the_priced_reservation_is_402(client, maker, settings, upstream):
    model_id = add_online_model(maker, settings, url=upstream.url)
    set_price(maker, model_id, 10, 10)
    # one output token short of what max_tokens=10 needs at this price
    user = make_user(maker, settings, tokens=estimate(maker, settings) * 10 + 9 * 10)
    r = client.post(
        "/textModel/chat",
        json={"dialog": DIALOG, "model": "fake", "max_tokens": 10},
        headers=user_headers(client, user.username),
    )
    assert r.json()["code"] == "TOKEN_NOT_ENOUGH"
    assert upstream.requests == []
    assert_ledger_consistent(maker, user.id)


def test_v1_usage_is_raw_tokens_while_the_ledger_charges_the_price(client, maker, settings, upstream):
    model_id = add_online_model(maker, settings, url=upstream.url)
    set_price(maker, model_id, 0.5, 2.5)
    user = make_user(maker, settings, tokens=100_000)
    with maker.begin() as s:
        _, key = apikeys.create_key(s, user_id=user.id, name="k", actor="test")
    r = client.post(
        "/v1/chat/completions",
        json={"model": "fake", "messages": DIALOG, "max_tokens": 64},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    completion = len(upstream.deltas)
    assert r.json()["usage"] == {
        "prompt_tokens": PROMPT,
        "completion_tokens": completion,
        "total_tokens": PROMPT + completion,
    }
    assert balance(maker, user.id) == 100_000 - math.ceil(PROMPT * 0.5 + completion * 2.5)
    assert_ledger_consistent(maker, user.id)


def test_admin_api_sets_and_lists_prices_with_audit(client, maker, settings, upstream):
    model_id = add_online_model(maker, settings, url=upstream.url)
    headers = super_admin_headers(client, maker, settings)
    r = client.post(
        "/admin/prices/model", json={"model_name": "fake", "prompt_price": 1.5, "completion_price": 4}, headers=headers
    )
    assert r.json()["code"] == 0, r.text
    bad = client.post("/admin/prices/model", json={"model_id": model_id, "prompt_price": -1}, headers=headers)
    assert bad.status_code == 422
    missing = client.post("/admin/prices/model", json={"model_name": "nope"}, headers=headers)
    assert missing.status_code == 404
    e = client.post("/admin/prices/engine", json={"kind": "picture", "engine": "embedded", "price": 2}, headers=headers)
    assert e.json()["code"] == 0
    listed = client.get("/admin/prices", headers=headers).json()["data"]
    assert listed["models"] == [
        {"model_id": model_id, "model_name": "fake", "prompt_price": 1.5, "completion_price": 4.0}
    ]
    assert listed["engines"] == [{"kind": "picture", "engine": "embedded", "price": 2.0}]
    with maker() as s:
        actions = list(
            s.scalars(select(AuditLog.action).where(AuditLog.action.like("set_%price")).order_by(AuditLog.id))
        )
    assert actions == ["set_model_price", "set_engine_price"]
