"""Screenshots of every dashboard page for every role, in a real browser, for a person to look at.

`python -m tests.dashboard.screenshots [zh-CN|en]`: a throw-away SQLite database,
`streamlit run Home.py` on a free port, Debian's chromium driven by Playwright. First a
fresh install (only the super admin): the sign-in page and the empty Overview. Then with demo
data: the super admin and a user each sign in through the form and open every page of their
navigation by its address (each a new browser session, signed in again by the dashboard's
cookie), and the user opens an admin page's address. PNGs (whole pages) go to
tests/artifacts/dashboard/<language>/ (git-ignored). Not a test: tests/browser/ holds those.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "artifacts" / "dashboard"
SUPER_PAGES = ("", "usage", "playground", "tables", "users", "vouchers", "models", "conversations", "admins", "account")
USER_PAGES = ("", "usage", "conversations", "playground", "apikeys")
PASSWORD = "shot-password-1"
RUN_TIMEOUT = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(url: str, data_dir: str, language: str) -> Iterator[str]:
    """`streamlit run Home.py` on a free port over `url`; yields its base address."""
    port = free_port()
    env = dict(
        os.environ,
        METEOR_DATABASE_URL=url,
        METEOR_DATA_DIR=data_dir,
        METEOR_BCRYPT_ROUNDS="4",
        METEOR_LANGUAGE=language,
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the dashboard did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def main(language: str = "zh-CN") -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    from backend import i18n
    from backend.accounts import service as accounts
    from backend.bootstrap import ensure_default_model
    from backend.config import Settings
    from backend.reporting.demo import seed_demo
    from db import migrate
    from db.session import get_sessionmaker
    from tests.browser.helpers import screenshot, settle

    def tr(key: str) -> str:
        return i18n.translate(key, language)

    out = OUT / language
    out.mkdir(parents=True, exist_ok=True)

    def shot(page: Page, name: str) -> None:
        settle(page)
        # charts draw after the run: wait until no chart or grid is still a loading skeleton
        expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0, timeout=RUN_TIMEOUT)
        page.wait_for_timeout(800)
        print(screenshot(page, f"dashboard/{language}/{name}"), flush=True)

    def sign_in(page: Page, base: str, kind: str, name: str, password: str) -> None:
        page.goto(base)
        for _attempt in range(3):  # the cookie component may rerun the page once, emptying the form
            page.get_by_label(tr("login.username")).wait_for(timeout=RUN_TIMEOUT)
            settle(page)
            page.get_by_text(tr(f"login.kind.{kind}"), exact=True).click()
            settle(page)
            page.get_by_label(tr("login.username"), exact=True).fill(name)
            page.get_by_label(tr("login.password"), exact=True).fill(password)
            page.get_by_role("button", name=tr("login.submit")).click()
            try:
                page.get_by_role("button", name=tr("logout")).wait_for(timeout=20_000)
                return
            except Exception:  # noqa: BLE001 - the form was emptied by a rerun: fill it again
                continue
        raise RuntimeError(f"{kind} {name} could not sign in")

    def open_by_address(page: Page, base: str, path: str) -> None:
        page.goto(f"{base}/{path}")
        page.locator("h1").first.wait_for(timeout=RUN_TIMEOUT)

    with tempfile.TemporaryDirectory(prefix="meteor-shots-") as tmp:
        url = f"sqlite:///{tmp}/meteor.db"
        migrate.upgrade(url)
        settings = Settings(database_url=url, data_dir=Path(tmp), bcrypt_rounds=4)
        maker = get_sessionmaker(url)
        with maker.begin() as session:
            accounts.create_admin(session, settings, name="root", password=PASSWORD, is_super=True, actor=None)
            ensure_default_model(session)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])

            def new_page() -> Page:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.set_default_timeout(RUN_TIMEOUT)
                return context.new_page()

            with dashboard(url, tmp, language) as base:  # a fresh install
                page = new_page()
                page.goto(base)
                page.get_by_label(tr("login.username")).wait_for(timeout=RUN_TIMEOUT)
                shot(page, "login")
                sign_in(page, base, "admin", "root", PASSWORD)
                shot(page, "fresh-overview")
                page.context.close()

            with maker.begin() as session:
                seed_demo(session, settings, users=300, usage=20_000, seed=3)
                accounts.create_user(session, settings, username="alice", password=PASSWORD, academy="计算机学院")
            with dashboard(url, tmp, language) as base:
                for kind, name, role, paths in (
                    ("admin", "root", "super", SUPER_PAGES),
                    ("user", "alice", "user", USER_PAGES),
                ):
                    page = new_page()
                    sign_in(page, base, kind, name, PASSWORD)
                    for path in paths:
                        open_by_address(page, base, path)
                        shot(page, f"{role}-{path or 'start'}")
                    if role == "user":
                        open_by_address(page, base, "users")  # an admin page's address
                        shot(page, "user-admin-address-refused")
                    page.context.close()
            browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
