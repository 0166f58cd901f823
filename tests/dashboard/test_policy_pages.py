"""The quota-policy parts of the dashboard through the real Home.py under AppTest: the
Allowances page (create, list with the next run, preview, run now after a confirmation), model
prices edited on the Models page, rate limits set on the Users page, spend on the Usage page."""

from __future__ import annotations

import pytest
import streamlit as st
from sqlalchemy import func, select

from backend.billing import pricing
from db.models import AuditLog, ModelInfo, RateLimit, User
from tests.dashboard.apptest import button, dashboard_env, go, sign_in, titles
from tests.factories import make_admin, make_user

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker


@pytest.fixture
def dash(monkeypatch, settings, maker):
    dashboard_env(monkeypatch, settings)
    st.cache_data.clear()
    make_admin(maker, settings, name="root", is_super=True)
    return settings


def test_allowance_created_previewed_and_run_from_the_page(dash, maker):
    users = [make_user(maker, dash, academy="CS", tokens=t) for t in (0, 250)]
    outsider = make_user(maker, dash, academy="Law")
    at = sign_in("admin", "root")
    go(at, "pages/allowances.py")
    assert titles(at) == ["Allowances"]
    assert "Nothing to show" in [i.value for i in at.info]
    at.text_input(key="allowances_new_name").input("cs-monthly")
    at.text_input(key="allowances_new_academy").input("CS")
    at.number_input(key="allowances_new_tokens").set_value(1000)
    button(at, "New allowance").click().run()
    assert not at.exception, at.exception
    assert "Allowance cs-monthly created" in [m.value for m in at.success]
    listed = at.dataframe[0].value
    assert list(listed["name"]) == ["cs-monthly"] and list(listed["granted_this_period"]) == [0]
    text = " ".join(m.value for m in at.markdown)
    assert "2 users, 1750 tokens" in text and "due now" in text
    with maker() as s:  # nothing granted before the confirmation
        assert [s.get(User, u.id).tokens for u in users] == [0, 250]
    button(at, "Run now").click().run()
    assert "Grant cs-monthly" in " ".join(w.value for w in at.warning)
    button(at, "Confirm").click().run()
    assert not at.exception, at.exception
    assert "Granted: 2 users, 1750 tokens and 0 picTimes" in [m.value for m in at.success]
    with maker() as s:
        assert [s.get(User, u.id).tokens for u in users] == [1000, 1000]
        assert s.get(User, outsider.id).tokens == 0
        assert s.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "run_allowance")) == 1
    assert list(at.dataframe[0].value["granted_this_period"]) == [2]
    assert not [b for b in at.button if b.label == "Run now"]  # the period is complete


def test_model_prices_are_edited_on_the_models_page(dash, maker):
    with maker.begin() as s:
        s.add(ModelInfo(model_name="big", ai_name="some-base", link_type=0))
    at = sign_in("admin", "root")
    go(at, "pages/models.py")
    assert "Prices" in [h.value for h in at.subheader]
    with maker() as s:
        model_id = s.scalar(select(ModelInfo.model_id).where(ModelInfo.model_name == "big"))
    at.session_state["prices_editor"] = {
        "edited_rows": {0: {"prompt_price": 15.0, "completion_price": 60.0}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    button(at, "Save 1 price changes").click().run()
    assert not at.exception, at.exception
    assert "1 prices saved" in [m.value for m in at.success]
    with maker() as s:
        assert pricing.model_price(s, model_id) == pricing.Price(15.0, 60.0)


def test_rate_limits_are_set_on_the_users_page(dash, maker):
    alice = make_user(maker, dash, username="alice_rl", academy="CS")
    at = sign_in("admin", "root")
    go(at, "pages/users.py")
    assert "Rate limits" in [h.value for h in at.subheader]
    at.selectbox(key="limits_scope").set_value("user")
    at.text_input(key="limits_subject").input("alice_rl")
    at.text_input(key="limits_rpm").input("30")
    button(at, "Save limits").click().run()
    assert not at.exception, at.exception
    at.selectbox(key="limits_scope").set_value("academy")
    at.text_input(key="limits_subject").input("CS")
    at.text_input(key="limits_rpm").input("")
    at.text_input(key="limits_tpm").input("20000")
    button(at, "Save limits").click().run()
    with maker() as s:
        rows = {(r.scope, r.subject): (r.rpm, r.tpm) for r in s.scalars(select(RateLimit))}
    assert rows == {("user", alice.id): (30, None), ("academy", "CS"): (None, 20000)}


def test_usage_page_shows_spend_in_quota_units(dash, maker):
    at = sign_in("admin", "root")
    go(at, "pages/usage.py")
    assert not at.exception
    assert "Spend (quota units and raw tokens)" in [h.value for h in at.subheader]


def test_models_page_shows_connection_health_and_edits_routes(dash, maker):
    from backend.catalog import routing
    from db.models import ConnectionCall, ModelAiOnline, ModelRoute

    with maker.begin() as s:
        conn = ModelAiOnline(ai_api="http://127.0.0.1:9/v1", ai_name="upstream-a", protocol="openai")
        model = ModelInfo(model_name="routed", ai_name="m", link_type=1)
        s.add_all([conn, model])
        s.flush()
        model.aiol_id = conn.ai_id
        s.add(ConnectionCall(connection_id=conn.ai_id, ok=True, latency_ms=40))
        routing.record_failure(s, conn.ai_id, status=401, reason="invalid key", threshold=3, cooldown_seconds=60)
        conn_id, model_id = conn.ai_id, model.model_id
    at = sign_in("admin", "root")
    go(at, "pages/models.py")
    assert not at.exception, at.exception
    health = next(d.value for d in at.dataframe if "p50_ms_1h" in d.value.columns)
    row = health[health["name"] == "upstream-a"].iloc[0]
    assert (row["state"], row["reason"], row["requests_1h"], row["errors_1h"]) == (
        "disabled",
        "HTTP 401: invalid key",
        2,
        1,
    )
    at.selectbox(key="routes_model").set_value(model_id)
    at.selectbox(key="routes_conn").set_value(conn_id)
    at.number_input(key="routes_priority").set_value(5)
    button(at, "Save route").click().run()
    assert not at.exception, at.exception
    button(at, "Re-enable").click().run()
    with maker() as s:
        assert [(r.connection_id, r.priority) for r in s.scalars(select(ModelRoute))] == [(conn_id, 5)]
        assert routing.health(s)[0]["state"] == "ok"


def test_models_page_shows_what_failover_through_the_gateway_recorded(dash, maker):
    """Real chats over a model with a 401 connection and a healthy one: the page shows the
    disabling with its reason and each connection's requests, errors and p50."""
    import asyncio

    from backend.catalog import routing
    from backend.chat import gateway
    from tests.fakes.openai_server import OpenAIServer
    from tests.gateway.helpers import add_connection, add_online_model

    dialog = [{"role": "user", "content": "hi"}]
    with OpenAIServer(api_key="a-key-we-do-not-hold") as wrong, OpenAIServer(reply="fine") as healthy:
        model_id = add_online_model(maker, dash, url=healthy.url, name="routed")
        ids = [add_connection(maker, dash, url=u.url, name=n) for u, n in ((wrong, "wrong-key"), (healthy, "good"))]
        with maker.begin() as s:
            for cid, priority in zip(ids, (10, 0), strict=True):
                routing.set_route(s, model_id=model_id, connection_id=cid, priority=priority, actor="test")
        user = make_user(maker, dash, tokens=1_000)
        caller = gateway.Caller(user_id=user.id, academy=user.academy)
        for _ in range(2):
            answer = asyncio.run(gateway.chat(maker, dash, caller=caller, dialog=dialog, model_name="routed"))
            assert answer.content == healthy.reply_text
        assert len(wrong.requests) == 1  # disabled after its 401: not asked again
    at = sign_in("admin", "root")
    go(at, "pages/models.py")
    assert not at.exception, at.exception
    health = next(d.value for d in at.dataframe if "p50_ms_1h" in d.value.columns).set_index("name")
    assert health.loc["wrong-key", "state"] == "disabled" and "401" in health.loc["wrong-key", "reason"]
    assert (health.loc["wrong-key", "requests_1h"], health.loc["wrong-key", "errors_1h"]) == (1, 1)
    assert (health.loc["good", "state"], health.loc["good", "requests_1h"], health.loc["good", "errors_1h"]) == (
        "ok",
        2,
        0,
    )
    assert health.loc["good", "p50_ms_1h"] >= 0
