"""The browser tests' stack: its known accounts and answer limits, the chromium they drive,
where screenshots go, and what the `stack` fixture (conftest.py) yields."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import sessionmaker

from backend import i18n
from backend.config import Settings
from tests.servers import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ADMIN_PASSWORD = "browser-admin-pass-1"
ALICE_PASSWORD = "alice-pass-123"
ALICE_TOKENS = 1000
ANSWER_TOKENS = 48


def zh(key: str, **values: object) -> str:
    """A dashboard string as the default (zh-CN) page shows it."""
    return i18n.translate(key, "zh-CN", **values)


@dataclass
class Stack:
    api_url: str
    ui_url: str
    settings: Settings
    maker: sessionmaker
    alice_id: str
