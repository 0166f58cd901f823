"""What a person does in the browser: sign in, open a page from the navigation, wait for
Streamlit to finish a run, take the screenshot; and the playground frame's chat."""

from __future__ import annotations

import time
from dataclasses import dataclass

from playwright.sync_api import FrameLocator, Page, expect

from backend.dashboard.auth import COOKIE_NAME
from tests.browser.stack import ARTIFACTS, zh

RUN_TIMEOUT = 60_000  # ms: one Streamlit run of a page on a busy 2-core machine
CHAT_TIMEOUT = 180.0  # s: one answer of the embedded model, queue included
NAV = '[data-testid="stSidebarNav"]'
MAX_SHOT_HEIGHT = 4000
PLAYGROUND_FRAME = 'iframe[src*="/playground/"]'


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the current run (its status widget is gone)."""
    page.wait_for_timeout(300)  # the widget appears a moment after the rerun starts
    expect(page.locator('[data-testid="stStatusWidget"]')).to_be_hidden(timeout=RUN_TIMEOUT)


def no_exception(page: Page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def sign_in(page: Page, ui_url: str, kind: str, name: str, password: str) -> None:
    """Sign in on the dashboard's form. The cookie component may rerun the page once right
    after it loads (which empties the form), so a sign-in that did not take is tried again."""
    page.goto(ui_url, timeout=RUN_TIMEOUT)
    for attempt in range(3):
        expect(page.get_by_label(zh("login.username"))).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        if kind == "user":
            page.get_by_text(zh("login.kind.user"), exact=True).click()
            settle(page)
        page.get_by_label(zh("login.username")).fill(name)
        page.get_by_label(zh("login.password")).fill(password)
        page.get_by_role("button", name=zh("login.submit")).click()
        try:
            expect(page.locator(NAV)).to_be_visible(timeout=20_000 if attempt < 2 else RUN_TIMEOUT)
            break
        except AssertionError:
            if attempt == 2:
                raise
    settle(page)
    # the remember-me cookie is written by a component in the browser on the run after sign-in:
    # wait for it, so a test that opens an address next is signed in again from it like a person
    page.wait_for_function(f"document.cookie.includes('{COOKIE_NAME}=')", timeout=RUN_TIMEOUT)
    # the component then reports the cookie back, which reruns the page it was rendered on: a
    # click into the navigation before that rerun ends can be undone by it (seen on a cold start)
    settle(page)


def nav_links(page: Page) -> list[tuple[str, str]]:
    """(title, href) of every page in the signed-in role's navigation."""
    links = page.locator(f"{NAV} a")
    return [
        (links.nth(i).inner_text().strip().split("\n")[-1], links.nth(i).get_attribute("href"))
        for i in range(links.count())
    ]


def open_page(page: Page, title: str) -> None:
    """Open a page from the sidebar by its title and wait until it has rendered."""
    page.locator(f"{NAV} a", has_text=title).first.click()
    expect(page.locator("h1", has_text=title).first).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    no_exception(page)


def screenshot(page: Page, name: str) -> str:
    """The whole page (Streamlit scrolls inside its main area, so the window is made as
    tall as that area for the picture, at most MAX_SHOT_HEIGHT), saved under tests/artifacts/."""
    path = ARTIFACTS / f"{name}.png"
    viewport = page.viewport_size
    height = page.evaluate(
        """() => Math.max(document.body.scrollHeight,
             ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]')]
                .map(e => e.scrollHeight))"""
    )
    page.set_viewport_size(
        {"width": viewport["width"], "height": max(viewport["height"], min(height, MAX_SHOT_HEIGHT))}
    )
    page.wait_for_timeout(600)  # charts and grids re-layout to the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(viewport)
    return str(path)


def playground_frame(page: Page) -> FrameLocator:
    frame = page.frame_locator(PLAYGROUND_FRAME)
    expect(frame.locator("#pg-who")).not_to_be_empty(timeout=RUN_TIMEOUT)  # the load event ran, signed in
    return frame


# Records, inside the page, the new answer's length at every change of the chat's DOM, so
# "it streamed" is what the browser rendered, not what a poll from the test happened to see.
WATCH_ANSWER = """el => {
  const before = el.querySelectorAll('[data-testid="bot"]').length;
  const lengths = el.__answerLengths = [];
  el.__answerWatch?.disconnect();
  el.__answerWatch = new MutationObserver(() => {
    const bots = el.querySelectorAll('[data-testid="bot"]');
    const n = bots.length > before ? bots[bots.length - 1].innerText.length : 0;
    if (!lengths.length || lengths[lengths.length - 1] !== n) lengths.push(n);
  });
  el.__answerWatch.observe(el, {subtree: true, childList: true, characterData: true});
}"""


@dataclass
class StreamedAnswer:
    text: str
    lengths: list[int]  # the answer's length at each change of the page while it was being written
    status: str


def chat(frame: FrameLocator, message: str, done_mark: str = "✓") -> StreamedAnswer:
    """Send `message` and watch the answer grow until the status line says it is done."""
    chatbot = frame.locator("#pg-chatbot")
    chatbot.evaluate(WATCH_ANSWER)
    box = frame.locator("#pg-input textarea")
    box.fill(message)
    box.press("Enter")
    answer = frame.locator('#pg-chatbot [data-testid="bot"]').last
    status = frame.locator("#pg-status")
    deadline = time.monotonic() + CHAT_TIMEOUT
    while time.monotonic() < deadline:
        line = status.inner_text(timeout=5_000)
        if done_mark in line or "⚠" in line:
            lengths = chatbot.evaluate("el => el.__answerLengths")
            return StreamedAnswer(answer.inner_text() if answer.count() else "", lengths, line)
        time.sleep(0.2)
    seen = chatbot.evaluate("el => el.__answerLengths")
    raise AssertionError(
        f"no finished answer within {CHAT_TIMEOUT} s; lengths seen {seen[-10:]}; "
        f"status {status.inner_text()!r}; chat {chatbot.inner_text()[-300:]!r}"
    )
