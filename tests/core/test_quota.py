"""The quota service: atomic, never overspent, balance == ledger sum, on every database."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from backend.billing import quota
from backend.errors import ServiceError
from db.models import QuotaReservation
from tests.factories import make_user


def test_reserve_settle_refunds_unused(maker, settings):
    user = make_user(maker, settings, tokens=100)
    with maker.begin() as s:
        rid = quota.reserve(s, user_id=user.id, tokens=60, model="m")
    with maker.begin() as s:
        assert quota.balance(s, user.id).tokens == 40
        charged = quota.settle(s, reservation_id=rid, tokens=25, prompt_tokens=10, completion_tokens=15)
    assert charged.tokens == 25
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(75, 0) == quota.ledger_sum(s, user.id)


def test_settle_is_capped_at_reservation_and_idempotent(maker, settings):
    user = make_user(maker, settings, tokens=100)
    with maker.begin() as s:
        rid = quota.reserve(s, user_id=user.id, tokens=10)
    with maker.begin() as s:
        assert quota.settle(s, reservation_id=rid, tokens=500).tokens == 10
    with maker.begin() as s:
        assert quota.settle(s, reservation_id=rid, tokens=1) is None
        assert quota.release(s, reservation_id=rid) is False
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 90 == quota.ledger_sum(s, user.id).tokens


def test_release_returns_everything(maker, settings):
    user = make_user(maker, settings, tokens=5, pic_times=2)
    with maker.begin() as s:
        rid = quota.reserve(s, user_id=user.id, tokens=5, pic_times=1)
    with maker.begin() as s:
        assert quota.release(s, reservation_id=rid) is True
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(5, 2) == quota.ledger_sum(s, user.id)


def test_not_enough_is_402_and_writes_nothing(maker, settings):
    user = make_user(maker, settings, tokens=5, pic_times=0)
    with pytest.raises(ServiceError) as exc, maker.begin() as s:
        quota.reserve(s, user_id=user.id, tokens=6)
    assert (exc.value.code, exc.value.status) == ("TOKEN_NOT_ENOUGH", 402)
    with pytest.raises(ServiceError) as exc, maker.begin() as s:
        quota.reserve(s, user_id=user.id, pic_times=1)
    assert exc.value.code == "PIC_TIMES_NOT_ENOUGH"
    with maker() as s:
        assert s.scalars(select(QuotaReservation)).all() == []
        assert quota.balance(s, user.id) == quota.Balance(5, 0) == quota.ledger_sum(s, user.id)


def test_adjust_never_goes_negative(maker, settings):
    user = make_user(maker, settings, tokens=5)
    with pytest.raises(ServiceError), maker.begin() as s:
        quota.adjust(s, user_id=user.id, tokens=-6, actor="t")
    with maker.begin() as s:
        quota.adjust(s, user_id=user.id, tokens=-5, pic_times=3, actor="t")
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(0, 3) == quota.ledger_sum(s, user.id)


def test_sweeper_releases_only_expired(maker, settings):
    user = make_user(maker, settings, tokens=30)
    with maker.begin() as s:
        stale = quota.reserve(s, user_id=user.id, tokens=10, ttl=timedelta(seconds=-1))
        live = quota.reserve(s, user_id=user.id, tokens=10, ttl=timedelta(minutes=5))
    with maker.begin() as s:
        assert quota.sweep_expired(s, now=datetime.now(UTC)) == 1
    with maker() as s:
        assert s.get(QuotaReservation, stale).status == "released"
        assert s.get(QuotaReservation, live).status == "active"
        assert quota.balance(s, user.id).tokens == 20 == quota.ledger_sum(s, user.id).tokens


@pytest.mark.committed
def test_hundred_concurrent_reservations_against_250(maker, settings):
    """100 threads reserve 10 tokens each against 250: exactly 25 succeed."""
    user = make_user(maker, settings, tokens=250)

    def attempt(_):
        try:
            with maker.begin() as s:
                return quota.reserve(s, user_id=user.id, tokens=10)
        except ServiceError as exc:
            assert exc.code == "TOKEN_NOT_ENOUGH"
            return None

    with ThreadPoolExecutor(max_workers=100) as pool:
        reservations = [r for r in pool.map(attempt, range(100)) if r]
    assert len(reservations) == 25
    with maker.begin() as s:
        for rid in reservations:
            quota.settle(s, reservation_id=rid, tokens=10)
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 0
        assert quota.ledger_sum(s, user.id).tokens == 0


@pytest.mark.committed
def test_concurrent_set_balance_and_reserve_keep_ledger_exact(maker, settings):
    user = make_user(maker, settings, tokens=1000)

    def work(i):
        try:
            with maker.begin() as s:
                if i % 3 == 0:
                    quota.set_balance(s, user_id=user.id, tokens=500 + i, actor="t")
                else:
                    rid = quota.reserve(s, user_id=user.id, tokens=7)
                    quota.settle(s, reservation_id=rid, tokens=3)
        except ServiceError:
            pass

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(work, range(60)))
    with maker() as s:
        bal = quota.balance(s, user.id)
        assert bal.tokens >= 0 and bal == quota.ledger_sum(s, user.id)
