"""Every dashboard page for every role, through the real Home.py under streamlit's AppTest:
sign-in with streamlit-authenticator, navigation per role, the quota edit round trip,
server-side revocation, the playground token. The database comes from `METEOR_DATABASE_URL`
(see tests/dashboard/apptest.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import streamlit as st
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from backend import security
from backend.dashboard import auth
from backend.reporting.demo import seed_demo
from db.models import AuditLog, LoginAttempt, ModelConversation, ModelMessage, QuotaLedger, UsageRecord, User
from tests.dashboard.apptest import ROOT, button, dashboard_env, go, open_dashboard, sign_in, titles
from tests.factories import make_admin, make_user

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

ADMIN_PAGES = {
    "overview": "Overview",
    "usage": "Usage & audit",
    "playground": "Playground",
    "tables": "Tables",
    "users": "Users & quotas",
    "vouchers": "Vouchers",
    "models": "Models",
    "conversations": "Conversations",
    "account": "My account",
}
USER_PAGES = {
    "account": "My account",
    "usage": "My usage",
    "conversations": "Conversations",
    "playground": "Playground",
    "apikeys": "API keys",
}


@pytest.fixture
def dash(monkeypatch, settings, maker):
    """The dashboard pointed at this test's database, with a little demo data."""
    dashboard_env(monkeypatch, settings)
    st.cache_data.clear()  # the database is shared by the tests of a run; its rows are not
    with maker.begin() as s:
        seed_demo(s, settings, users=20, usage=300, seed=1)
    return settings


def assert_unreachable(at, page: str, title: str) -> None:
    """Neither in the role's navigation nor reachable by its address (AppTest finds no page
    file registered at that address)."""
    with pytest.raises(ValueError):
        at.switch_page(f"pages/{page}.py")
    assert title not in titles(at)


def test_a_page_file_run_by_itself_goes_through_the_sign_in_gate(dash, maker):
    """Streamlit runs a file under pages/ by itself on a process's first run (before any
    st.navigation call): without a signed-in session every page shows the sign-in form and
    nothing of its own."""
    make_admin(maker, dash, name="root", is_super=True)
    for page in (*ADMIN_PAGES, "admins", "apikeys"):
        at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=30).run()
        assert not at.exception, page
        assert titles(at) == ["Meteor AI Cloud"] and not at.dataframe, page
        assert [b.label for b in at.button] == ["Sign in"] and len(at.text_input) == 2, page


def test_login_page_renders_in_chinese_by_default(monkeypatch, settings):
    dashboard_env(monkeypatch, settings, language="zh-CN")
    at = open_dashboard()
    assert not at.exception
    assert titles(at) == ["流星智慧云平台"]
    assert [b.label for b in at.button] == ["登录"]
    at.radio(key="meteor_language").set_value("en").run()
    assert titles(at) == ["Meteor AI Cloud"] and [b.label for b in at.button] == ["Sign in"]


def test_wrong_password_is_refused_and_counted(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    at = sign_in("admin", "root", password="wrong-password")
    assert [e.value for e in at.error] == ["Wrong username or password"]
    assert_unreachable(at, "overview", "Overview")
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt).where(LoginAttempt.subject == "admin:root")) == 1


def test_too_many_failures_lock_the_account(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    with maker.begin() as s:
        for _ in range(dash.login_max_failures_per_account):
            s.add(LoginAttempt(subject="admin:root"))
    at = sign_in("admin", "root")  # even the right password
    assert "Too many failed sign-ins; try again later" in [e.value for e in at.error]
    assert_unreachable(at, "overview", "Overview")


def test_super_admin_opens_every_page(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    at = sign_in("admin", "root")
    assert titles(at) == ["Overview"]
    for page, title in {**ADMIN_PAGES, "admins": "Admins"}.items():
        go(at, f"pages/{page}.py")
        assert titles(at) == [title], page
        assert not at.error, (page, [e.value for e in at.error])


def test_admin_has_no_admins_page(dash, maker):
    make_admin(maker, dash, name="ops")
    at = sign_in("admin", "ops")
    assert_unreachable(at, "admins", "Admins")
    go(at, "pages/users.py")
    assert titles(at) == ["Users & quotas"]


def test_user_gets_only_their_own_pages(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    alice = make_user(maker, dash, username="alice", tokens=1234, pic_times=5)
    with maker.begin() as s:
        s.add(UsageRecord(user_id=alice.id, model="m1", prompt_tokens=3, completion_tokens=4, latency_ms=50))
    at = sign_in("user", "alice")
    assert titles(at) == ["My account"]
    assert [m.value for m in at.metric] == ["1,234", "5"]
    for page, title in USER_PAGES.items():
        go(at, f"pages/{page}.py")
        assert titles(at) == [title], page
    for page, title in ADMIN_PAGES.items():
        if page not in USER_PAGES:
            assert_unreachable(at, page, title)
    assert_unreachable(at, "admins", "Admins")
    # the same signed-in session opening an admin page's address (a bookmark, a typed /admins)
    # as a new browser tab's first run: it shows no admin content either
    forged = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=60)
    for key in ("authentication_status", "username", "name", "roles", auth.ACCOUNT_KEY, auth.VERSION_KEY):
        forged.session_state[key] = at.session_state[key]
    forged.switch_page("pages/admins.py").run()
    assert not forged.exception, forged.exception
    assert titles(forged) == ["My account"]  # the stand-in at that address switches to the role's start page
    assert not [f for f in forged.text_input if f.label == "Admin name"]
    assert [w.value for w in forged.warning] == [
        "That page does not exist or this account may not open it; here is your start page instead."
    ]
    # the usage page shows only this user's rows (the demo users have plenty of their own)
    go(at, "pages/usage.py")
    shown = at.dataframe[0].value
    assert list(shown["user_id"]) == [alice.id] and list(shown["model"]) == ["m1"]


def test_quota_edit_in_place_writes_ledger_and_audit(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    alice = make_user(maker, dash, username="aaa_alice", academy="CS", tokens=100)
    at = sign_in("admin", "root")
    go(at, "pages/users.py")
    at.text_input(key="users_text").input("aaa_alice")
    button(at, "Search").click().run()
    editor = f"users_editor_{at.session_state['users_editor_round']}"
    assert [r["username"] for r in at.session_state["users_shown"]] == ["aaa_alice"]
    at.session_state[editor] = {
        "edited_rows": {0: {"tokens": 900, "academy": "Math"}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    button(at, "Review changes").click().run()
    changes = at.dataframe[-1].value
    assert set(zip(changes["field"], changes["before"], changes["after"], strict=True)) == {
        ("tokens", "100", "900"),
        ("academy", "CS", "Math"),
    }
    with maker() as s:  # nothing is written before the confirmation
        assert s.get(User, alice.id).tokens == 100
    button(at, "Confirm and save 1 changes").click().run()
    assert not at.exception
    assert "Saved changes to 1 users (ledger and audit written)" in [m.value for m in at.success]
    with maker() as s:
        user = s.get(User, alice.id)
        assert (user.tokens, user.academy) == (900, "Math")
        ledger = s.scalars(select(QuotaLedger).where(QuotaLedger.user_id == alice.id).order_by(QuotaLedger.id)).all()
        assert [(r.kind, r.delta_tokens, r.actor) for r in ledger][-1] == ("admin_adjust", 800, "admin:root")
        audit = s.scalars(select(AuditLog).where(AuditLog.target_id == alice.id, AuditLog.action == "modify_user"))
        assert len(audit.all()) == 1


def test_bulk_grant_to_an_academy_after_preview(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    members = [make_user(maker, dash, academy="Tiny") for _ in range(2)]
    at = sign_in("admin", "root")
    go(at, "pages/users.py")
    at.radio(key="users_bulk_target").set_value("academy")
    at.selectbox(key="users_bulk_academy").set_value("Tiny")
    at.number_input(key="users_bulk_amount").set_value(250)
    button(at, "Preview").click().run()
    assert "Will apply to 2 users: Grant tokens 250" in [i.value for i in at.info]
    button(at, "Confirm").click().run()
    assert not at.exception
    with maker() as s:
        assert [s.get(User, u.id).tokens for u in members] == [250, 250]
        assert s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "bulk_grant_tokens")) == 1


def test_vouchers_batch_and_download(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    at = sign_in("admin", "root")
    go(at, "pages/vouchers.py")
    at.text_input(key="vouchers_name").input("term1")
    at.number_input(key="vouchers_count").set_value(3)
    at.text_input(key="vouchers_academy").input("CS")
    button(at, "Save").click().run()
    assert not at.exception
    assert "3 vouchers created" in [m.value for m in at.success]
    assert [r["name"] for r in at.session_state["vouchers_created"]] == ["term1-001", "term1-002", "term1-003"]
    at.text_input(key="vouchers_pick").input("term1-002")
    button(at, "Disable").click().run()
    assert "Voucher term1-002 disabled" in [m.value for m in at.success]


def test_tables_page_filters_and_never_shows_a_hash(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    at = sign_in("admin", "root")
    go(at, "pages/tables.py")
    frame = at.dataframe[0].value
    assert "password_hash" not in frame.columns and "token_version" not in frame.columns
    at.text_input(key="tables_users_text").input("demo_")
    button(at, "Apply").click().run()
    assert "Page 1 of 1, 20 rows" in [c.value for c in at.caption]
    at.selectbox(key="tables_table").set_value("connections").run()
    assert "ai_token_encrypted" not in at.dataframe[0].value.columns if at.dataframe else True
    button(at, "Export the filtered rows as CSV").click().run()
    assert not at.exception


def test_conversation_opens_and_reads(dash, maker):
    make_admin(maker, dash, name="root", is_super=True)
    alice = make_user(maker, dash, username="alice")
    with maker.begin() as s:
        conv = ModelConversation(user_id=alice.id, title="hello there", ai_name="SmolLM2")
        s.add(conv)
        s.flush()
        s.add_all(
            [
                ModelMessage(conversation_id=conv.id, role="user", content="what is 2+2?"),
                ModelMessage(conversation_id=conv.id, role="assistant", content="It is 4."),
            ]
        )
    for kind, name in (("admin", "root"), ("user", "alice")):
        at = sign_in(kind, name)
        go(at, "pages/conversations.py")
        assert [m.value for m in at.markdown if m.value in ("what is 2+2?", "It is 4.")] == ["what is 2+2?", "It is 4."]


def test_playground_embeds_a_signed_short_lived_token(dash, maker):
    alice = make_user(maker, dash, username="alice")
    at = go(sign_in("user", "alice"), "pages/playground.py")
    url = at.session_state["playground_url"]
    parts = urlsplit(url)
    assert parts.path == "/playground/" and parse_qs(parts.query)["lang"] == ["en"]
    claims = security.decode_token(dash, parse_qs(parts.query)["token"][0], role="user", kind="playground")
    assert claims["sub"] == alice.id and claims["ver"] == 0


def test_logout_revokes_on_the_server(dash, maker):
    alice = make_user(maker, dash, username="alice")
    at = sign_in("user", "alice")
    other_browser = sign_in("user", "alice")
    at.button(key="meteor_logout").click().run()
    assert titles(at) == ["Meteor AI Cloud"]  # the login page
    with maker() as s:
        assert s.get(User, alice.id).token_version == 1
    other_browser.run()  # the other session is checked against the database and ends
    assert titles(other_browser) == ["Meteor AI Cloud"]
    assert "Session revoked (signed out or password changed); sign in again" in [w.value for w in other_browser.warning]


def test_password_change_keeps_this_session_and_ends_others(dash, maker):
    make_user(maker, dash, username="alice")
    at = sign_in("user", "alice")
    other_browser = sign_in("user", "alice")
    at.text_input(key="account_old").input("correct-horse-1")
    at.text_input(key="account_new").input("brand-new-pass")
    at.text_input(key="account_repeat").input("brand-new-pass")
    button(at, "Change password").click().run()
    assert "Password changed; every other session is revoked" in [m.value for m in at.success]
    at.run()
    assert titles(at) == ["My account"]
    other_browser.run()
    assert titles(other_browser) == ["Meteor AI Cloud"]
    assert sign_in("user", "alice", password="brand-new-pass").session_state[auth.ACCOUNT_KEY].name == "alice"


def test_disabled_user_cannot_sign_in(dash, maker):
    make_user(maker, dash, username="alice")
    with maker.begin() as s:
        s.execute(User.__table__.update().where(User.username == "alice").values(status="disabled"))
    at = sign_in("user", "alice")
    assert titles(at) == ["Meteor AI Cloud"]
    assert "This account is disabled" in [w.value for w in at.warning]


def test_persona_form_creates_a_model_with_parameters_and_examples(dash, maker):
    from db.models import ModelInfo

    make_admin(maker, dash, name="root", is_super=True)
    at = go(sign_in("admin", "root"), "pages/models.py")
    at.text_input(key="models_name_0").input("tutor")
    at.text_input(key="models_base_0").input("smollm2-135m-instruct")
    at.text_area(key="models_system_0").input("You are a patient tutor.")
    at.number_input(key="models_p_temperature_0").set_value(0.3)
    at.number_input(key="models_p_top_k_0").set_value(20)
    button(at, "Save").click().run()
    assert not at.exception
    assert "Model tutor saved" in [m.value for m in at.success]
    with maker() as s:
        model = s.scalars(select(ModelInfo).where(ModelInfo.model_name == "tutor")).one()
        assert (model.model_file.system, model.model_file.temperature, model.model_file.top_k) == (
            "You are a patient tutor.",
            0.3,
            20,
        )
