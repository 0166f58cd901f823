"""The playground in Debian's chromium: embedded in the dashboard, signed in without a second
login, a chat streamed from the embedded SmolLM2 and charged; the language follows the
dashboard; an anonymous browser gets nothing."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from backend.billing import quota
from db.models import ModelConversation, ModelMessage, UsageRecord
from tests.browser.helpers import RUN_TIMEOUT, chat, open_page, playground_frame, screenshot, settle, sign_in
from tests.browser.stack import ADMIN_PASSWORD, ALICE_PASSWORD, zh

pytestmark = pytest.mark.slow


def test_a_user_chats_in_the_embedded_playground_and_sees_the_answer_stream(page, stack):
    with stack.maker() as s:
        before = quota.balance(s, stack.alice_id)
    sign_in(page, stack.ui_url, "user", "alice", ALICE_PASSWORD)
    open_page(page, zh("page.playground"))
    frame = playground_frame(page)
    expect(frame.locator("#pg-who")).to_contain_text("alice")
    expect(frame.locator("#pg-who")).to_contain_text(f"{before.tokens} tokens")

    answer = chat(frame, "Hello! What can you do for a student?")
    assert "✓" in answer.status, answer.status
    assert answer.text.strip()
    growing = [n for n in answer.lengths if n > 0]
    # markdown may shorten the text for a moment ("**bo" → "bo"), so: several sizes, the last the longest
    assert len(set(growing)) >= 3 and growing[-1] == max(growing), f"the answer did not stream: {answer.lengths}"
    screenshot(page, "playground-user-chat")

    with stack.maker() as s:
        row = s.scalars(
            select(UsageRecord).where(UsageRecord.user_id == stack.alice_id).order_by(UsageRecord.id.desc())
        ).first()
        after = quota.balance(s, stack.alice_id)
        conv = s.scalars(select(ModelConversation).where(ModelConversation.user_id == stack.alice_id)).first()
        kept = s.scalars(select(ModelMessage.content).where(ModelMessage.conversation_id == conv.id)).all()
    charged = row.prompt_tokens + row.completion_tokens
    assert row.status == "ok" and row.model == "SmolLM2" and row.provider == "embedded"
    assert after.tokens == before.tokens - charged
    assert f"{after.tokens} tokens" in answer.status  # the balance left is shown
    assert len(kept) == 2 and kept[0] == "Hello! What can you do for a student?"
    assert kept[1].split()[0] in answer.text  # the reply that streamed is the one kept


def test_the_playground_follows_the_dashboard_language_and_an_admin_is_charged_to_no_one(page, stack):
    sign_in(page, stack.ui_url, "admin", "admin", ADMIN_PASSWORD)
    page.get_by_role("radiogroup", name=zh("app.language")).get_by_text("English", exact=True).click()
    settle(page)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Playground").click()
    expect(page.locator("h1", has_text="Playground")).to_be_visible(timeout=RUN_TIMEOUT)
    frame = playground_frame(page)
    expect(frame.locator("#pg-title")).to_contain_text("Meteor playground")
    expect(frame.locator("#pg-who")).to_contain_text("console test, charged to no user")
    expect(frame.get_by_role("tab", name="Voice")).to_be_visible()

    answer = chat(frame, "Say hello to the academies.")
    assert "charged to no user" in answer.status and answer.text.strip()
    screenshot(page, "playground-admin-english")
    with stack.maker() as s:
        row = s.scalars(select(UsageRecord).where(UsageRecord.admin_name == "admin")).one()
    assert row.user_id is None and row.status == "ok"


def test_an_anonymous_browser_gets_the_sign_in_page_not_the_playground(browser, stack):
    context = browser.new_context(locale="en-US")
    try:
        tab = context.new_page()
        response = tab.goto(f"{stack.api_url}/playground/?lang=en", timeout=RUN_TIMEOUT)
        assert response.status == 401
        expect(tab.locator("h1")).to_contain_text("Please sign in")
        assert tab.locator("gradio-app").count() == 0
        screenshot(tab, "playground-anonymous")
        expired = tab.goto(f"{stack.api_url}/playground/?token=forged.link.token", timeout=RUN_TIMEOUT)
        assert expired.status == 401
        assert not [c for c in context.cookies() if c["name"] == "meteor_playground"]
    finally:
        context.close()
