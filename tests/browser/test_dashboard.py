"""The dashboard in Debian's chromium: sign in, edit a quota on Users, and a screenshot of
every page each role can open (saved under tests/artifacts/ for a person to look at)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from backend.billing import quota
from db.models import AuditLog, QuotaLedger
from tests.browser.helpers import NAV, RUN_TIMEOUT, nav_links, no_exception, open_page, screenshot, settle, sign_in
from tests.browser.stack import ADMIN_PASSWORD, ALICE_PASSWORD, zh

pytestmark = pytest.mark.slow

ADMIN_PAGES = [
    "page.overview",
    "page.usage",
    "page.playground",
    "page.tables",
    "page.users",
    "page.vouchers",
    "page.allowances",
    "page.models",
    "page.conversations",
    "page.admins",
    "page.account",
]
USER_PAGES = ["page.account", "page.my_usage", "page.conversations", "page.playground", "page.apikeys"]


def test_an_admin_changes_a_quota_on_users_and_it_is_saved_with_ledger_and_audit(page, stack):
    sign_in(page, stack.ui_url, "admin", "admin", ADMIN_PASSWORD)
    open_page(page, zh("page.users"))
    page.get_by_label(zh("users.search")).fill("alice")
    page.get_by_role("button", name=zh("common.search"), exact=True).click()
    expect(page.get_by_text(zh("users.shown_all", total=1), exact=True)).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)

    # the editor is a canvas grid: select alice's row, move to the tokens column, open the
    # cell's editor (it appears in the grid's #portal), type the new value, commit
    grid = page.locator('[data-testid="stDataFrame"]').first
    editor = page.locator("#portal input, #portal textarea")
    for _attempt in range(3):
        box = grid.bounding_box()
        page.mouse.click(box["x"] + 120, box["y"] + 35 + 17)  # alice's username cell (below the header)
        page.wait_for_timeout(200)
        for _ in range(3):  # username → email → academy → tokens
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(100)
        page.keyboard.press("Enter")
        try:
            expect(editor).to_be_visible(timeout=3_000)
            break
        except AssertionError:
            page.keyboard.press("Escape")
    editor.fill("1500")
    editor.press("Enter")
    expect(editor).to_be_hidden(timeout=5_000)
    page.wait_for_timeout(500)  # the grid sends the edit to the server after the commit
    page.get_by_role("button", name=zh("users.review")).click()
    confirm = page.get_by_role("button", name=zh("users.confirm_apply", n=1))
    expect(confirm).to_be_visible(timeout=RUN_TIMEOUT)
    screenshot(page, "dashboard-admin-users-confirm")
    confirm.click()
    expect(page.get_by_text(zh("users.applied", n=1))).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    no_exception(page)
    screenshot(page, "dashboard-admin-users-saved")

    with stack.maker() as s:
        balance = quota.balance(s, stack.alice_id)
        assert balance.tokens == 1500
        assert quota.ledger_sum(s, stack.alice_id) == balance
        last = s.scalars(
            select(QuotaLedger).where(QuotaLedger.user_id == stack.alice_id).order_by(QuotaLedger.id.desc())
        ).first()
        assert last.delta_tokens == 500 and last.actor == "admin:admin"
        audit = s.scalars(select(AuditLog).where(AuditLog.target_id == stack.alice_id)).all()
        assert any(a.actor == "admin:admin" for a in audit)
    # and the page shows the saved value after a fresh search
    page.get_by_role("button", name=zh("common.search"), exact=True).click()
    settle(page)
    expect(page.get_by_text(zh("users.shown_all", total=1), exact=True)).to_be_visible(timeout=RUN_TIMEOUT)


@pytest.mark.parametrize(
    ("kind", "name", "password", "pages"),
    [("admin", "admin", ADMIN_PASSWORD, ADMIN_PAGES), ("user", "alice", ALICE_PASSWORD, USER_PAGES)],
    ids=["super-admin", "user"],
)
def test_every_page_of_each_role_renders_and_is_photographed(page, stack, kind, name, password, pages):
    sign_in(page, stack.ui_url, kind, name, password)
    titles = [title for title, _href in nav_links(page)]
    assert titles == [zh(key) for key in pages]  # exactly the role's pages, nothing more
    for key, title in zip(pages, titles, strict=True):
        open_page(page, title)
        if key == "page.playground":
            expect(page.frame_locator('iframe[src*="/playground/"]').locator("#pg-who")).not_to_be_empty(
                timeout=RUN_TIMEOUT
            )
        screenshot(page, f"dashboard-{kind}-{key.removeprefix('page.')}")
    no_exception(page)


def test_a_user_cannot_open_an_admin_page_by_its_address(page, stack):
    sign_in(page, stack.ui_url, "user", "alice", ALICE_PASSWORD)
    page.goto(f"{stack.ui_url}/users", timeout=RUN_TIMEOUT)
    expect(page.locator(NAV)).to_be_visible(timeout=RUN_TIMEOUT)  # signed in again from the cookie
    expect(page.locator("h1").first).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    assert page.locator("h1", has_text=zh("page.users")).count() == 0
    expect(page.get_by_text(zh("nav.refused"))).to_be_visible(timeout=RUN_TIMEOUT)  # translated, on the start page
    assert page.get_by_text("Page not found").count() == 0  # not Streamlit's English box
    expect(page.locator("body")).not_to_contain_text("demo_")  # no other user's row leaks
    screenshot(page, "dashboard-user-admin-page-refused")
