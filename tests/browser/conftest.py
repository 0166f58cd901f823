"""Real servers and a real browser: the API server (`python -m backend serve-api`) and the
dashboard (`streamlit run Home.py`) on free loopback ports over one SQLite data dir, and
Debian's chromium driven by Playwright (headless; never `playwright install`).

The stack is seeded with `python -m backend seed-demo` (so the pages have something to
show), a known user `alice`, and the embedded SmolLM2 as the default model with a short
answer limit (a chat takes seconds, not minutes). Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from backend.accounts import service as accounts
from backend.billing import quota
from backend.config import Settings
from db.models import ModelFile
from db.session import get_sessionmaker
from tests.browser.stack import (
    ADMIN_PASSWORD,
    ALICE_PASSWORD,
    ALICE_TOKENS,
    ANSWER_TOKENS,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    Stack,
)
from tests.servers import ROOT, START_TIMEOUT, free_port, stop, wait_healthy

LOG_TAIL = 6_000  # characters of each server's log shown under a failed browser test
_server_logs: list[Path] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test shows what the two servers logged: a stall in the browser is
    often a server-side story (a stuck queue, an exception in a Gradio event)."""
    report = yield
    if report.failed and report.when == "call":
        for log in _server_logs:
            if log.exists():
                report.sections.append((f"{log.name} (tail)", log.read_text(errors="replace")[-LOG_TAIL:]))
    return report


# Package scope: Playwright's sync API keeps an event loop running in the main thread
# until it stops, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="package")
def stack(tmp_path_factory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("browser-data")
    logs = tmp_path_factory.mktemp("browser-logs")
    api_port, ui_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METEOR_")}
    env.update(
        METEOR_DATA_DIR=str(data),
        METEOR_ADMIN_PASSWORD=ADMIN_PASSWORD,
        METEOR_API_PORT=str(api_port),
        METEOR_UI_PORT=str(ui_port),
        METEOR_PUBLIC_API_URL=f"http://127.0.0.1:{api_port}",
        METEOR_BCRYPT_ROUNDS="4",
        METEOR_LANGUAGE="zh-CN",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    python = sys.executable
    seeded = subprocess.run(
        [python, "-m", "backend", "seed-demo", "--users", "40", "--usage", "3000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert seeded.returncode == 0, seeded.stderr[-3000:]

    settings = Settings(data_dir=data, bcrypt_rounds=4)  # the secrets the servers use (data_dir/secrets.json)
    maker = get_sessionmaker(settings.resolved_database_url)
    with maker.begin() as s:
        alice = accounts.create_user(s, settings, username="alice", password=ALICE_PASSWORD, academy="计算机学院")
        s.flush()
        quota.grant(s, user_id=alice.id, tokens=ALICE_TOKENS, pic_times=3, actor="test")
        s.execute(update(ModelFile).values(num_predict=ANSWER_TOKENS, temperature=0.3))
        alice_id = alice.id

    api_log, ui_log = logs / "api.log", logs / "ui.log"
    _server_logs[:] = [api_log, ui_log]
    api = subprocess.Popen(
        [python, "-m", "backend", "serve-api", "--port", str(api_port), "--skip-prepare"],
        cwd=ROOT,
        env=env,
        stdout=api_log.open("w"),
        stderr=subprocess.STDOUT,
    )
    ui = None
    try:
        wait_healthy(f"http://127.0.0.1:{api_port}/healthz", api, api_log)
        ui = subprocess.Popen(
            [
                python,
                "-m",
                "streamlit",
                "run",
                "Home.py",
                "--server.port",
                str(ui_port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=ui_log.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_healthy(f"http://127.0.0.1:{ui_port}/_stcore/health", ui, ui_log)
        yield Stack(f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}", settings, maker, alice_id)
    finally:
        for process in (ui, api):
            if process is not None:
                stop(process)


@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    context.set_default_timeout(30_000)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="session", autouse=True)
def _artifacts_dir() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
