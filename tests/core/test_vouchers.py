"""Voucher redemption (`POST /user/get_token`): rules, errors and exactly-once under concurrency."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from backend.billing import quota, vouchers
from backend.errors import ServiceError
from db.models import Redemption, User
from tests.factories import make_user, user_headers


def make_voucher(maker, **kw):
    values = dict(name="v", tokens=100, pic_times=5, academy="CS", actor="test")
    values.update(kw)
    with maker.begin() as s:
        return vouchers.create_voucher(s, **values).id


def redeem(client, headers, code, user_id=None, academy="CS"):
    return client.post(
        "/user/get_token", json={"token_id": code, "user_id": user_id, "user_academy": academy}, headers=headers
    )


def test_redeem_adds_quota_once(client, maker, settings):
    user = make_user(maker, settings, academy="CS")
    code = make_voucher(maker)
    h = user_headers(client, user.username)
    r = redeem(client, h, code, user.id)
    assert r.json()["code"] == 0 and (r.json()["tokens"], r.json()["picTimes"]) == (100, 5)
    r = redeem(client, h, code, user.id)
    assert r.status_code == 409 and r.json()["code"] == "TOKEN_ALREADY_GET"
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(100, 5) == quota.ledger_sum(s, user.id)


def test_many_users_of_the_academy_may_redeem(client, maker, settings):
    code = make_voucher(maker)
    for _ in range(3):
        user = make_user(maker, settings, academy="CS")
        assert redeem(client, user_headers(client, user.username), code).json()["code"] == 0


def test_redeem_errors(client, maker, settings):
    user = make_user(maker, settings, academy="CS")
    other = make_user(maker, settings, academy="CS")
    h = user_headers(client, user.username)
    r = redeem(client, h, "no-such-code")
    assert r.status_code == 404 and r.json()["code"] == "TOKEN_NOT_FOUND"
    art = make_voucher(maker, name="art", academy="Art")
    r = redeem(client, h, art, academy="Art")
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    off = make_voucher(maker, name="off", available=False)
    r = redeem(client, h, off)
    assert r.status_code == 409 and r.json()["code"] == "TOKEN_NOT_AVAILABLE"
    old = make_voucher(maker, name="old", expires_at=datetime.now(UTC) - timedelta(days=1))
    assert redeem(client, h, old).json()["code"] == "TOKEN_NOT_AVAILABLE"
    cs = make_voucher(maker, name="cs")
    r = redeem(client, h, cs, user_id=other.id)
    assert r.status_code == 403
    r = client.post("/user/get_token", json={"token_id": cs})
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    r = client.post("/user/get_token", json={"user_id": user.id}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "USER_GET_TOKEN_ERROR"
    with maker() as s:
        assert quota.balance(s, user.id) == quota.Balance(0, 0)


def test_max_redemptions_cap(client, maker, settings):
    code = make_voucher(maker, max_redemptions=2)
    results = []
    for _ in range(3):
        user = make_user(maker, settings, academy="CS")
        results.append(redeem(client, user_headers(client, user.username), code).json()["code"])
    assert results == [0, 0, "TOKEN_NOT_AVAILABLE"]


def test_legacy_uuid_mode(client, maker, settings, app):
    user = make_user(maker, settings, academy="CS")
    code = make_voucher(maker)
    body = {"token_id": code, "user_id": user.id, "username": user.username, "user_academy": "CS"}
    assert client.post("/user/get_token", json=body).status_code == 401
    app.state.settings = settings.model_copy(update={"legacy_uuid_auth": True})
    assert client.post("/user/get_token", json=body).json()["code"] == 0


@pytest.mark.committed
def test_fifty_threads_redeem_same_voucher_once(maker, settings):
    """50 threads, one user, one voucher: granted exactly once."""
    user = make_user(maker, settings, academy="CS")
    code = make_voucher(maker, tokens=10, pic_times=1)

    def attempt(_):
        try:
            with maker.begin() as s:
                vouchers.redeem(s, voucher_id=code, user_id=user.id, user_academy="CS")
            return "ok"
        except ServiceError as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count("ok") == 1
    assert set(outcomes) - {"ok"} == {"TOKEN_ALREADY_GET"}
    with maker() as s:
        assert s.get(User, user.id).tokens == 10
        assert s.scalar(select(func.count()).select_from(Redemption)) == 1
        assert quota.ledger_sum(s, user.id) == quota.balance(s, user.id)
