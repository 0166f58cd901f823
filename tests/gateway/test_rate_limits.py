"""Rate limits (backend/accounts/rate_limits.py): the sliding window with an injected clock,
on the database and on Redis; 429 + Retry-After in each family's envelope on every chat and
recognition path; two replicas sharing one limit."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from backend.accounts import apikeys, rate_limits
from backend.playground import session as playground
from backend.server import create_app
from db.models import AuditLog, QuotaReservation, UsageRecord
from db.session import _configure_sqlite, normalize_url
from tests.factories import make_settings, make_user, super_admin_headers, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model, assert_ledger_consistent
from tests.media.samples import small_picture

DIALOG = [{"role": "user", "content": "Say hello"}]
T0 = datetime(2026, 12, 2, 9, 0, 0, tzinfo=UTC)
REDIS = os.environ.get("METEOR_TEST_REDIS_URL")


@pytest.fixture(params=["database", "redis"])
def backend_settings(request, db_url, tmp_path):
    """Settings of the database backend, and of the Redis one when a test Redis is given."""
    if request.param == "redis":
        if not REDIS:
            pytest.skip("METEOR_TEST_REDIS_URL is not set")
        return make_settings(db_url, tmp_path, redis_url=REDIS)
    return make_settings(db_url, tmp_path)


@pytest.fixture
def upstream():
    with OpenAIServer(reply="Hello there from upstream", prompt_tokens=10) as server:
        yield server


def limit(maker, scope: str, subject: str, rpm=None, tpm=None) -> None:
    with maker.begin() as s:
        rate_limits.set_limit(s, scope=scope, subject=subject, rpm=rpm, tpm=tpm, actor="test")


def admit(maker, settings, user, at: datetime, tokens: int = 0, key_id: int | None = None) -> int | None:
    """Admit one request at `at`: None when admitted, else the Retry-After seconds."""
    try:
        with maker.begin() as s:
            rate_limits.admit(
                s, settings, user_id=user.id, academy=user.academy, api_key_id=key_id, tokens=tokens, now=at
            )
    except rate_limits.RateLimited as exc:
        return exc.retry_after
    return None


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the window -------------------------------------------------------------------------------


def test_requests_per_minute_slide_with_the_clock(maker, backend_settings):
    user = make_user(maker, backend_settings)
    limit(maker, "user", user.id, rpm=3)
    assert [admit(maker, backend_settings, user, at(t)) for t in (0, 10, 20)] == [None, None, None]
    assert admit(maker, backend_settings, user, at(30)) == 30  # the request at 0 leaves at 60
    assert admit(maker, backend_settings, user, at(59.5)) == 1
    assert admit(maker, backend_settings, user, at(60.5)) is None  # 0 left the window: room for one
    assert admit(maker, backend_settings, user, at(61)) == 9  # now 10 must leave (at 70)
    assert admit(maker, backend_settings, user, at(80.5)) is None  # 10 and 20 left: room for two
    assert admit(maker, backend_settings, user, at(80.6)) is None
    assert admit(maker, backend_settings, user, at(80.7)) == 40  # 60.5 leaves at 120.5


def test_tokens_per_minute_count_each_requests_most(maker, backend_settings):
    user = make_user(maker, backend_settings)
    limit(maker, "user", user.id, tpm=100)
    assert admit(maker, backend_settings, user, at(0), tokens=40) is None
    assert admit(maker, backend_settings, user, at(5), tokens=40) is None
    assert admit(maker, backend_settings, user, at(10), tokens=40) == 50  # 40 must leave: the one at 0
    assert admit(maker, backend_settings, user, at(10), tokens=20) is None  # 100 fits exactly
    assert admit(maker, backend_settings, user, at(61), tokens=50) == 4  # at 61: 40 (5) + 20 (10) + 50 > 100
    assert admit(maker, backend_settings, user, at(66), tokens=50) is None


def test_academy_default_applies_per_user_and_a_users_own_limit_wins(maker, backend_settings):
    a = make_user(maker, backend_settings, academy="Law")
    b = make_user(maker, backend_settings, academy="Law")
    limit(maker, "academy", "Law", rpm=1)
    assert admit(maker, backend_settings, a, at(0)) is None
    assert admit(maker, backend_settings, b, at(0)) is None  # each user has their own window
    assert admit(maker, backend_settings, a, at(1)) == 59
    limit(maker, "user", a.id, rpm=5)
    assert admit(maker, backend_settings, a, at(2)) is None


def test_a_keys_limit_is_its_own_window(maker, backend_settings):
    user = make_user(maker, backend_settings)
    with maker.begin() as s:
        first, _ = apikeys.create_key(s, user_id=user.id, name="one", actor="test")
        second, _ = apikeys.create_key(s, user_id=user.id, name="two", actor="test")
    limit(maker, "key", str(first.id), rpm=1)
    assert admit(maker, backend_settings, user, at(0), key_id=first.id) is None
    assert admit(maker, backend_settings, user, at(1), key_id=first.id) == 59
    assert admit(maker, backend_settings, user, at(1), key_id=second.id) is None  # no limit on this key
    assert admit(maker, backend_settings, user, at(1)) is None  # nor on the user


@pytest.mark.committed
def test_two_replicas_share_one_limit(maker, backend_settings, db_url):
    """Two engines (two replicas' connection pools) on one database / one Redis, requests in
    parallel threads: exactly the limit is admitted."""
    user = make_user(maker, backend_settings)
    limit(maker, "user", user.id, rpm=5)
    url = normalize_url(db_url)
    from sqlalchemy import create_engine

    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_size=8)
    other = sessionmaker(bind=engine, expire_on_commit=False)
    start = threading.Barrier(12)
    outcomes: list[int | None] = []

    def request(replica) -> None:
        start.wait()
        outcomes.append(admit(replica, backend_settings, user, at(1)))

    threads = [threading.Thread(target=request, args=(maker if i % 2 else other,)) for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    engine.dispose()
    assert len(outcomes) == 12
    assert outcomes.count(None) == 5
    assert set(outcomes) - {None} == {60}  # all five admitted at 1 s leave at 61 s


# --- every path -------------------------------------------------------------------------------


def test_429_with_retry_after_on_every_chat_path(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=100_000)
    headers = user_headers(client, user.username)
    limit(maker, "user", user.id, rpm=1)
    assert client.post("/textModel/chat", json={"dialog": DIALOG, "model": "fake"}, headers=headers).json()["code"] == 0
    seen = len(upstream.requests)

    r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and 1 <= int(r.headers["Retry-After"]) <= 60
    r = client.post("/textModel/stream", json={"dialog": DIALOG, "model": "fake"}, headers=headers)
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and r.headers["Retry-After"]

    with maker.begin() as s:
        _, key = apikeys.create_key(s, user_id=user.id, name="k", actor="test")
    v1 = {"Authorization": f"Bearer {key}"}
    for stream in (False, True):
        r = client.post(
            "/v1/chat/completions", json={"model": "fake", "messages": DIALOG, "stream": stream}, headers=v1
        )
        assert r.status_code == 429 and r.headers["Retry-After"]
        assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "RATE_LIMITED"

    with maker() as s:
        account = playground.account_for(s, f"user:{user.id}")

    async def play():
        return [
            p
            async for p in playground.stream_chat(
                maker, settings, account=account, model_name="fake", message="hi", history=None, conversation_id=None
            )
        ]

    steps = asyncio.run(play())
    assert steps[-1].done and steps[-1].error.status == 429

    assert len(upstream.requests) == seen  # no refused request reached the upstream
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(QuotaReservation)) == 1  # only the first chat reserved
        refused = s.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.error.like("RATE_LIMITED%")))
    assert refused == 5
    assert_ledger_consistent(maker, user.id)


def test_a_keys_limit_on_v1(client, maker, settings, upstream):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=100_000)
    with maker.begin() as s:
        public, key = apikeys.create_key(s, user_id=user.id, name="k", actor="test")
    limit(maker, "key", str(public.id), rpm=1)
    v1 = {"Authorization": f"Bearer {key}"}
    assert (
        client.post("/v1/chat/completions", json={"model": "fake", "messages": DIALOG}, headers=v1).status_code == 200
    )
    r = client.post("/v1/chat/completions", json={"model": "fake", "messages": DIALOG}, headers=v1)
    assert r.status_code == 429 and "API key" in r.json()["error"]["message"]
    # the user's seed endpoint has no limit
    headers = user_headers(client, user.username)
    assert client.post("/textModel/chat", json={"dialog": DIALOG, "model": "fake"}, headers=headers).json()["code"] == 0


def test_429_on_the_recognition_paths(client, maker, settings):
    user = make_user(maker, settings, pic_times=10)
    headers = user_headers(client, user.username)
    limit(maker, "user", user.id, rpm=0)
    picture = small_picture()
    r = client.post("/PictureToTextModel/chat", files={"file": ("p.png", picture, "image/png")}, headers=headers)
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and r.headers["Retry-After"] == "60"
    silence = b"\0" * 32000  # one second of raw 16 kHz 16-bit mono PCM
    r = client.post("/voiceModel/chat", content=silence, headers=headers)
    assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED" and r.headers["Retry-After"] == "60"
    with maker() as s:
        kinds = sorted(s.scalars(select(UsageRecord.kind).where(UsageRecord.user_id == user.id)))
    assert kinds == []  # refused before any engine ran or anything was reserved
    assert_ledger_consistent(maker, user.id)


def test_two_apps_on_one_database_share_the_limit(maker, settings, upstream, tmp_path):
    add_online_model(maker, settings, url=upstream.url)
    user = make_user(maker, settings, tokens=100_000)
    limit(maker, "user", user.id, rpm=2)
    other = make_settings(settings.resolved_database_url, tmp_path / "b")
    with TestClient(create_app(settings, playground=False)) as a, TestClient(create_app(other, playground=False)) as b:
        headers = user_headers(a, user.username)
        body = {"dialog": DIALOG, "model": "fake"}
        assert a.post("/textModel/chat", json=body, headers=headers).json()["code"] == 0
        assert b.post("/textModel/chat", json=body, headers=headers).json()["code"] == 0
        assert a.post("/textModel/chat", json=body, headers=headers).status_code == 429
        assert b.post("/textModel/chat", json=body, headers=headers).status_code == 429


def test_admin_api_sets_limits_with_audit(client, maker, settings):
    headers = super_admin_headers(client, maker, settings)
    user = make_user(maker, settings, academy="CS")
    r = client.post("/admin/rate_limits", json={"scope": "user", "username": user.username, "rpm": 10}, headers=headers)
    assert r.json()["code"] == 0 and r.json()["data"]["subject"] == user.id
    r = client.post("/admin/rate_limits", json={"scope": "academy", "subject": "CS", "tpm": 5000}, headers=headers)
    assert r.json()["code"] == 0
    bad = client.post("/admin/rate_limits", json={"scope": "key", "subject": "999", "rpm": 1}, headers=headers)
    assert bad.status_code == 404
    listed = client.get("/admin/rate_limits", headers=headers).json()["data"]
    assert [(x["scope"], x["subject"], x["rpm"], x["tpm"]) for x in listed] == [
        ("academy", "CS", None, 5000),
        ("user", user.id, 10, None),
    ]
    gone = client.post("/admin/rate_limits", json={"scope": "academy", "subject": "CS"}, headers=headers)
    assert gone.json()["code"] == 0 and gone.json()["data"] is None
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "set_rate_limit")) == 3
