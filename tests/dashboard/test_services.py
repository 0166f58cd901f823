"""Dashboard services on every database: browse, overview aggregates, quota edits, bulk
actions, demo data, sign-in helpers and strings."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from backend import i18n, security
from backend.accounts.identity import Principal
from backend.billing import quota, vouchers
from backend.dashboard import admin as dashboard
from backend.dashboard import auth
from backend.errors import ServiceError
from backend.reporting import browse
from backend.reporting.demo import DEMO_PASSWORD, seed_demo
from db.models import Admin, AuditLog, LoginAttempt, ModelAiOnline, QuotaLedger, UsageRecord, User
from tests.factories import PASSWORD, make_admin, make_user

SECRET_COLUMNS = {"password_hash", "token_version", "key_hash", "ai_token_encrypted"}


def add_usage(maker, user, *, model="m1", tokens=(10, 5), when=None, status="ok", latency=100, ttft=20):
    with maker.begin() as s:
        s.add(
            UsageRecord(
                user_id=user.id,
                academy=user.academy,
                model=model,
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                status=status,
                latency_ms=latency,
                ttft_ms=ttft,
                created_at=when or datetime.now(UTC),
            )
        )


# --- browse --------------------------------------------------------------------------------


def test_browse_never_exposes_a_secret_column(maker, settings):
    for spec in browse.SPECS.values():
        for name, column in spec.columns.items():
            assert name not in SECRET_COLUMNS
            assert getattr(column, "key", name) not in SECRET_COLUMNS
    user = make_user(maker, settings, username="hashy")
    make_admin(maker, settings, name="rooty")
    with maker.begin() as s:
        s.add(
            ModelAiOnline(
                ai_name="conn1",
                ai_api="http://x/v1",
                ai_token_encrypted=security.encrypt_secret(settings, "sk-zzzz9999"),
            )
        )
    with maker() as s:
        hash_ = s.scalar(select(User.password_hash).where(User.id == user.id))
        encrypted = s.scalar(select(ModelAiOnline.ai_token_encrypted))
        for table in browse.TABLES:
            text = browse.export_csv(s, table).decode("utf-8")
            assert hash_ not in text and encrypted not in text and "sk-zzzz9999" not in text
        conn = browse.page(s, "connections").rows[0]
        assert conn["key_set"] in (True, 1) and "ai_token_encrypted" not in conn


def test_browse_filters_paging_sorting_and_csv(maker, settings):
    for i in range(7):
        make_user(maker, settings, username=f"stu_{i}", academy="CS" if i % 2 else "Math", tokens=100 * i)
    make_user(maker, settings, username="100%_sure", academy="Art")
    with maker() as s:
        everyone = browse.page(s, "users", page_size=3, sort="username", descending=False)
        assert everyone.total == 8 and everyone.pages == 3
        assert [r["username"] for r in everyone.rows] == ["100%_sure", "stu_0", "stu_1"]
        last = browse.page(s, "users", page=3, page_size=3, sort="username", descending=False)
        assert [r["username"] for r in last.rows] == ["stu_5", "stu_6"]

        cs = browse.BrowseFilters(academy="CS")
        assert browse.count(s, "users", cs) == 3
        rich = browse.BrowseFilters(numbers=(browse.NumberRange("tokens", 200, 500),))
        page = browse.page(s, "users", rich, sort="tokens", descending=True)
        assert [r["tokens"] for r in page.rows] == [500, 400, 300, 200]
        # LIKE wildcards in the search text are literal
        assert [r["username"] for r in browse.page(s, "users", browse.BrowseFilters(text="0%")).rows] == ["100%_sure"]
        assert browse.count(s, "users", browse.BrowseFilters(text="STU_")) == 7  # case-insensitive

        today = datetime.now(UTC).date()
        assert browse.count(s, "users", browse.BrowseFilters(date_from=today, date_to=today)) == 8
        assert browse.count(s, "users", browse.BrowseFilters(date_to=today - timedelta(days=1))) == 0

        # ledger has no academy column: the filter goes through the user's academy
        assert browse.count(s, "ledger", cs) == 3  # users with tokens > 0 in CS: stu_1, stu_3, stu_5

        rows = list(csv.DictReader(io.StringIO(browse.export_csv(s, "users", cs, sort="username").decode("utf-8-sig"))))
        assert [r["username"] for r in rows] == ["stu_5", "stu_3", "stu_1"]
        assert "password_hash" not in rows[0]

        with pytest.raises(ServiceError) as bad:
            browse.page(s, "users", sort="password_hash")
        assert bad.value.status == 422
        with pytest.raises(ServiceError):
            browse.page(s, "users", browse.BrowseFilters(equals={"password_hash": "x"}))
        with pytest.raises(ServiceError) as missing:
            browse.page(s, "login_attempts")
        assert missing.value.status == 404


def test_browse_joined_tables(maker, settings):
    user = make_user(maker, settings, username="redeemer", academy="CS")
    with maker.begin() as s:
        v = vouchers.create_voucher(s, name="spring", tokens=50, pic_times=1, academy="CS", actor="admin:t")
        code = v.id
    with maker.begin() as s:
        vouchers.redeem(s, voucher_id=code, user_id=user.id, user_academy=None)
    with maker() as s:
        rows = browse.page(s, "redemptions", browse.BrowseFilters(equals={"voucher": "spring"})).rows
        assert [(r["username"], r["voucher"], r["tokens"]) for r in rows] == [("redeemer", "spring", 50)]
        assert browse.count(s, "redemptions", browse.BrowseFilters(academy="Math")) == 0
        assert browse.count(s, "redemptions", browse.BrowseFilters(text="redeem")) == 1


# --- overview aggregates ------------------------------------------------------------------


def test_overview_aggregates(maker, settings):
    alice = make_user(maker, settings, username="alice", academy="CS", tokens=1000, pic_times=3)
    bob = make_user(maker, settings, username="bob", academy="Math", tokens=500)
    make_user(maker, settings, username="carol", academy="CS")
    now = datetime.now(UTC)
    add_usage(maker, alice, model="m1", tokens=(100, 50))
    add_usage(maker, alice, model="m2", tokens=(10, 10), status="error", latency=300, ttft=None)
    add_usage(maker, bob, model="m1", tokens=(5, 5), when=now - timedelta(days=2))
    add_usage(maker, bob, model="m1", tokens=(999, 1), when=now - timedelta(days=40))  # outside 30 days
    with maker() as s:
        o = dashboard.overview(s)
        assert (o.users, o.academies, o.tokens_in_circulation, o.pic_times_in_circulation) == (3, 2, 1500, 3)
        assert (o.requests_today, o.tokens_today) == (2, 170)
        per_day = dashboard.tokens_per_day(s, days=30)
        assert len(per_day) == 30 and per_day[-1]["day"] == now.date().isoformat()
        assert per_day[-1]["tokens"] == 170 and per_day[-1]["requests"] == 2
        assert per_day[-1]["latency_ms"] == 200.0 and per_day[-1]["ttft_ms"] == 20.0
        assert per_day[-3]["tokens"] == 10
        assert sum(d["tokens"] for d in per_day) == 180
        assert dashboard.tokens_per_model(s) == [
            {"model": "m1", "tokens": 160, "requests": 2},
            {"model": "m2", "tokens": 20, "requests": 1},
        ]
        assert dashboard.tokens_per_academy(s, days=90)[0] == {"academy": "Math", "tokens": 1010, "requests": 2}
        top = dashboard.top_users(s)
        assert [(u["username"], u["tokens"]) for u in top] == [("alice", 170), ("bob", 10)]
        mine = dashboard.tokens_per_model(s, user_id=bob.id)
        assert mine == [{"model": "m1", "tokens": 10, "requests": 1}]
        assert {r["status"]: r["requests"] for r in dashboard.status_counts(s)} == {"ok": 2, "error": 1}


# --- user & quota actions -----------------------------------------------------------------


def test_quota_edit_handler_writes_ledger_and_audit(maker, settings):
    alice = make_user(maker, settings, username="alice", academy="CS", tokens=100)
    bob = make_user(maker, settings, username="bob", academy="CS", tokens=5)
    with maker() as s:
        shown = browse.page(s, "users", sort="username", descending=False).rows
    edits = dashboard.plan_user_edits(
        shown,
        {
            0: {"tokens": 250, "pic_times": 4, "academy": " Math "},
            1: {"tokens": 5, "status": "disabled"},  # tokens unchanged: dropped from the plan
        },
    )
    assert [(e.username, e.after) for e in edits] == [
        ("alice", {"tokens": 250, "pic_times": 4, "academy": "Math"}),
        ("bob", {"status": "disabled"}),
    ]
    assert edits[0].before == {"tokens": 100, "pic_times": 0, "academy": "CS"}
    with maker.begin() as s:
        assert dashboard.apply_user_edits(s, settings, actor="admin:root", edits=edits) == 2
    with maker() as s:
        a, b = s.get(User, alice.id), s.get(User, bob.id)
        assert (a.tokens, a.pic_times, a.academy) == (250, 4, "Math")
        assert b.status == "disabled" and b.token_version == 1
        assert quota.ledger_sum(s, alice.id) == quota.balance(s, alice.id)
        adjust = s.scalars(
            select(QuotaLedger).where(QuotaLedger.user_id == alice.id, QuotaLedger.kind == "admin_adjust")
        )
        assert [(r.delta_tokens, r.delta_pic_times, r.actor) for r in adjust] == [(150, 4, "admin:root")]
        audits = s.scalars(select(AuditLog).where(AuditLog.action == "modify_user").order_by(AuditLog.id)).all()
        assert [a.target_id for a in audits] == [alice.id, bob.id]
        assert json.loads(audits[0].detail)["tokens"] == [100, 250]
        assert all(a.actor == "admin:root" for a in audits)


def test_quota_edit_refuses_bad_values_and_writes_nothing(maker, settings):
    make_user(maker, settings, username="alice", tokens=100)
    with maker() as s:
        shown = browse.page(s, "users").rows
    for bad in ({"tokens": -1}, {"status": "gone"}, {"username": "eve"}, {"tokens": None}):
        with pytest.raises(ServiceError) as err:
            dashboard.plan_user_edits(shown, {0: bad})
        assert err.value.status == 422
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 0


def test_bulk_grant_and_disable_academy(maker, settings):
    cs = [make_user(maker, settings, academy="CS") for _ in range(3)]
    other = make_user(maker, settings, academy="Math")
    with maker.begin() as s:
        ids = dashboard.users_in_academy(s, "CS")
        assert sorted(ids) == sorted(u.id for u in cs)
        seen = []
        n = dashboard.bulk_action(
            s,
            settings,
            actor="admin:root",
            user_ids=ids,
            action="grant_tokens",
            amount=300,
            progress=lambda i, total: seen.append((i, total)),
        )
        assert n == 3 and seen[-1] == (3, 3)
        dashboard.bulk_action(s, settings, actor="admin:root", user_ids=ids[:1], action="disable")
    with maker() as s:
        assert [s.get(User, u.id).tokens for u in cs] == [300, 300, 300]
        assert s.get(User, other.id).tokens == 0
        assert s.get(User, ids[0]).status == "disabled"
        for u in cs:
            assert quota.ledger_sum(s, u.id) == quota.balance(s, u.id)
        actions = s.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
        assert actions == ["bulk_grant_tokens", "bulk_disable"]
    with maker.begin() as s, pytest.raises(ServiceError):
        dashboard.bulk_action(s, settings, actor="admin:root", user_ids=ids, action="grant_tokens", amount=0)


def test_bulk_grant_to_a_missing_user_rolls_back(maker, settings):
    alice = make_user(maker, settings)
    with pytest.raises(ServiceError), maker.begin() as s:
        dashboard.bulk_action(
            s, settings, actor="admin:root", user_ids=[alice.id, "0" * 32], action="grant_tokens", amount=10
        )
    with maker() as s:
        assert s.get(User, alice.id).tokens == 0
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 0


# --- demo data ------------------------------------------------------------------------------


def test_seed_demo_bulk_inserts_consistent_rows(maker, settings):
    with maker.begin() as s:
        summary = seed_demo(s, settings, users=30, usage=500, seed=7)
    assert "30 demo users" in summary and "500 usage records" in summary
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 30
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 500
        user = s.scalars(select(User).limit(1)).one()
        assert security.verify_password(DEMO_PASSWORD, user.password_hash)
        assert quota.ledger_sum(s, user.id) == quota.balance(s, user.id)
        o = dashboard.overview(s)
        assert o.users == 30 and o.academies == 8
        assert (
            sum(d["requests"] for d in dashboard.tokens_per_day(s, days=91)) == 500
        )  # 90 days back from now touch 91 dates


# --- sign-in helpers -----------------------------------------------------------------------


def test_cookie_is_revoked_by_logout_and_password_change(maker, settings):
    user = make_user(maker, settings, username="alice")
    admin = make_admin(maker, settings, name="root")
    with maker() as s:
        for kind, name in (("user", "alice"), ("admin", "root")):
            account, _ = auth.find_account(s, kind, name)
            token = auth.encode_cookie(
                settings,
                username=name,
                kind=kind,
                version=account.token_version,
                account_id=account.id,
                identity=account.identity,
            )
            claims = security.jwt.decode(token, settings.cookie_key.get_secret_value(), algorithms=["HS256"])
            assert auth.verify_cookie(s, settings, claims).id == account.id
        user_claims = {"username": "alice", "kind": "user", "ver": 0}
        assert auth.verify_cookie(s, settings, {"username": "alice"}) is None  # not a Meteor cookie
    with maker.begin() as s:
        account = auth.load_account(s, "user", user.id)
        auth.revoke(s, account)
    with maker() as s:
        assert auth.verify_cookie(s, settings, user_claims) is None
        assert auth.check_session(s, "user", user.id, 0) is None
        assert auth.check_session(s, "user", user.id, 1).name == "alice"
    with maker() as s:
        root = auth.load_account(s, "admin", str(admin.id))
    new_version = auth.change_password(maker, settings, root, old_password=PASSWORD, new_password="another-pass-9")
    assert new_version == 1
    with maker() as s:
        assert auth.check_session(s, "admin", str(admin.id), 0) is None
        assert security.verify_password("another-pass-9", s.get(Admin, admin.id).password_hash)
    with pytest.raises(ServiceError):
        auth.change_password(maker, settings, root, old_password="wrong-pass", new_password="x" * 8)


def test_account_directory_loads_one_account_on_demand(maker, settings):
    make_user(maker, settings, username="Alice")
    make_user(maker, settings, username="disabled_one")
    with maker.begin() as s:
        s.execute(User.__table__.update().where(User.username == "disabled_one").values(status="disabled"))
        s.add(LoginAttempt(subject="user:Alice"))
    directory = auth.AccountDirectory(maker, settings, "user")
    assert "alice" in directory  # the authenticator lower-cases what was typed
    entry = directory["alice"]
    assert entry["name"] == "Alice" and entry["roles"] == ["user"] and entry["failed_login_attempts"] == 1
    assert security.verify_password(PASSWORD, entry["password"])
    assert "nobody" not in directory and directory.get("nobody") is None
    assert len(directory.loaded()) == 1
    directory.kind = "admin"
    assert "alice" not in directory  # users are not admins


def test_playground_token_and_url(settings):
    account = Principal("user", "ab" * 16, "alice", False, "CS", "active", 3)
    token = auth.playground_token(settings, account)
    claims = security.decode_token(settings, token, role="user", kind="playground")
    assert claims["sub"] == account.id and claims["ver"] == 3
    assert claims["exp"] - claims["iat"] == settings.playground_token_seconds
    url = auth.playground_url(settings, token, "en")
    assert url.startswith(f"http://127.0.0.1:{settings.api_port}/playground/?token=")
    admin = Principal("admin", "7", "root", True, None, "active", 0)
    assert security.decode_token(settings, auth.playground_token(settings, admin), role="admin", kind="playground")


def test_every_string_has_both_languages():
    for key, (zh, en) in i18n.STRINGS.items():
        assert zh.strip() and en.strip(), key
        assert set(_fields(zh)) == set(_fields(en)), key
    assert i18n.translate("page.users", "zh-CN") == "用户与配额"
    assert i18n.translate("page.users", "en-US") == "Users & quotas"
    assert i18n.translate("common.page_of", "en", page=1, pages=2, total=30) == "Page 1 of 2, 30 rows"
    assert i18n.translate("no.such.key", "en") == "no.such.key"


def _fields(text: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(text) if name]


def test_playground_url_follows_the_dashboards_host_name(settings):
    for browser_host, expected in [
        ("localhost:8501", "localhost"),
        ("10.1.2.3:8501", "10.1.2.3"),
        ("[::1]:8501", "[::1]"),
        (None, "127.0.0.1"),
    ]:
        url = auth.playground_url(settings, "tok", browser_host=browser_host)
        assert url.startswith(f"http://{expected}:{settings.api_port}/playground/?token=tok"), url
    pinned = settings.model_copy(update={"public_api_url": "https://ai.example.edu/"})
    assert auth.playground_url(pinned, "tok", browser_host="localhost:8501").startswith(
        "https://ai.example.edu/playground/?token=tok"
    )


def test_domain_errors_are_shown_in_the_dashboards_language():
    assert i18n.error_message("TOKEN_REPEAT", "voucher name 'x' already exists", "zh-CN") == (
        "兑换码名称已存在（voucher name 'x' already exists）"
    )
    assert i18n.error_message("TOKEN_REPEAT", "voucher name 'x' already exists", "en") == (
        "voucher name 'x' already exists"
    )
    assert i18n.error_message("SOMETHING_NEW", "detail", "zh-CN") == "detail"
