"""Screenshots of every dashboard page in a real browser, for a person to look at.

`python -m tests.dashboard.screenshots [zh-CN|en]`: a throw-away SQLite database with demo
data, `streamlit run Home.py` on a free port, Debian's chromium driven by Playwright; the
super admin signs in through the form, then every page is opened by its address (each a new
browser session, signed in again by the dashboard's cookie). PNGs go to
tests/artifacts/dashboard/ (git-ignored). Not a test: tests/browser/ holds those.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "artifacts" / "dashboard"
PAGES = ("", "usage", "playground", "tables", "users", "vouchers", "models", "conversations", "admins", "account")
PASSWORD = "shot-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(language: str = "zh-CN") -> None:
    from playwright.sync_api import sync_playwright

    from backend.config import Settings
    from backend.services import accounts
    from backend.services.bootstrap import ensure_default_model
    from backend.services.demo import seed_demo
    from db import migrate
    from db.session import get_sessionmaker

    with tempfile.TemporaryDirectory(prefix="meteor-shots-") as tmp:
        url = f"sqlite:///{tmp}/meteor.db"
        migrate.upgrade(url)
        settings = Settings(database_url=url, data_dir=Path(tmp), bcrypt_rounds=4)
        with get_sessionmaker(url).begin() as session:
            seed_demo(session, settings, users=300, usage=20_000, seed=3)
            accounts.create_admin(session, settings, name="root", password=PASSWORD, is_super=True, actor=None)
            ensure_default_model(session)
        port = free_port()
        env = dict(
            os.environ, METEOR_DATABASE_URL=url, METEOR_DATA_DIR=tmp, METEOR_BCRYPT_ROUNDS="4", METEOR_LANGUAGE=language
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port)],
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
            OUT.mkdir(parents=True, exist_ok=True)
            base = f"http://127.0.0.1:{port}"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(base)
                page.locator("input[type=password]").wait_for(timeout=30_000)
                page.screenshot(path=str(OUT / "login.png"))
                page.locator("input[type=text]").last.fill("root")
                page.locator("input[type=password]").fill(PASSWORD)
                page.locator("[data-testid=stBaseButton-secondaryFormSubmit]").first.click()
                page.get_by_role("button", name="退出登录" if language == "zh-CN" else "Sign out").wait_for(
                    timeout=30_000
                )
                for path in PAGES:
                    page.goto(f"{base}/{path}")
                    page.wait_for_load_state("networkidle")
                    page.locator("h1").first.wait_for(timeout=30_000)
                    page.wait_for_timeout(1500)  # charts draw after the page settles
                    page.screenshot(path=str(OUT / f"{path or 'overview'}.png"), full_page=True)
                    print(f"{OUT / (path or 'overview')}.png", flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main(*sys.argv[1:2])
