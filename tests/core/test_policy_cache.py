"""The policy rows every chat reads (a model's price, a user's rate limits) are cached for a
couple of seconds per process: a change through the service is seen at once, a change made
elsewhere (another replica) once the entry has lived its time. On the three databases."""

from __future__ import annotations

from sqlalchemy import update

from backend.accounts import rate_limits
from backend.billing import pricing
from backend.cache import TtlCache
from db.models import ModelInfo, ModelPrice, RateLimit
from tests.factories import make_user


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_reloaded_once_its_time_is_up():
    clock, loads = Clock(), []
    cache: TtlCache[int] = TtlCache(ttl=2.0, clock=clock)
    load = lambda: loads.append(1) or len(loads)  # noqa: E731
    assert cache.get("k", load) == 1
    clock.now += 1.9
    assert cache.get("k", load) == 1
    clock.now += 0.2
    assert cache.get("k", load) == 2
    cache.forget()
    assert cache.get("k", load) == 3


def _model(maker) -> int:
    with maker.begin() as s:
        model = ModelInfo(model_name="priced", ai_name="smollm2-135m-instruct", link_type=0, disable=0)
        s.add(model)
        s.flush()
        return model.model_id


def test_a_price_set_through_the_service_is_seen_at_once_one_set_elsewhere_after_the_ttl(maker, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(pricing._prices, "clock", clock)
    model_id = _model(maker)
    with maker() as s:
        assert pricing.model_price(s, model_id) == pricing.UNIT
    with maker.begin() as s:
        pricing.set_model_price(s, model_id, prompt=15, completion=60, actor="test")
    with maker() as s:
        assert pricing.model_price(s, model_id) == pricing.Price(15.0, 60.0)
    with maker.begin() as s:  # another replica's change: this process still has its entry
        s.execute(update(ModelPrice).where(ModelPrice.model_id == model_id).values(prompt_price=2))
    with maker() as s:
        assert pricing.model_price(s, model_id) == pricing.Price(15.0, 60.0)
    clock.now += pricing._prices.ttl + 0.1
    with maker() as s:
        assert pricing.model_price(s, model_id) == pricing.Price(2.0, 60.0)


def test_a_limit_set_through_the_service_is_seen_at_once_one_set_elsewhere_after_the_ttl(maker, settings, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(rate_limits._limits, "clock", clock)
    user = make_user(maker, settings, username="limited", academy="physics")
    with maker() as s:
        assert rate_limits.buckets(s, user_id=user.id, academy="physics") == []
    with maker.begin() as s:
        rate_limits.set_limit(s, scope="user", subject=user.id, rpm=3, tpm=None, actor="test")
    with maker() as s:
        [bucket] = rate_limits.buckets(s, user_id=user.id, academy="physics")
        assert bucket.rpm == 3
    with maker.begin() as s:
        s.execute(update(RateLimit).where(RateLimit.subject == user.id).values(rpm=9))
    with maker() as s:
        assert rate_limits.buckets(s, user_id=user.id, academy="physics")[0].rpm == 3
    clock.now += rate_limits._limits.ttl + 0.1
    with maker() as s:
        assert rate_limits.buckets(s, user_id=user.id, academy="physics")[0].rpm == 9
