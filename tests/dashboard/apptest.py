"""Running the real dashboard (Home.py) under streamlit's AppTest against a test database.

The dashboard reads its database and secrets from the `METEOR_*` environment exactly as in
production; `dashboard_env` points it at the test's database (AppTest runs the script in
this process, so the environment is shared)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from backend.config import Settings
from backend.dashboard import auth
from tests.factories import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
HOME = str(ROOT / "Home.py")


def dashboard_env(monkeypatch, settings: Settings, language: str = "en") -> None:
    """Point the dashboard at the test database with the test's secrets."""
    values = {
        "METEOR_DATABASE_URL": settings.resolved_database_url,
        "METEOR_DATA_DIR": str(settings.data_dir),
        "METEOR_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "METEOR_SECRET_KEY": settings.secret_key.get_secret_value(),
        "METEOR_COOKIE_KEY": settings.cookie_key.get_secret_value(),
        "METEOR_BCRYPT_ROUNDS": str(settings.bcrypt_rounds),
        "METEOR_LANGUAGE": language,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def open_dashboard(timeout: float = 60) -> AppTest:
    return AppTest.from_file(HOME, default_timeout=timeout).run()


def button(at: AppTest, label: str):
    """The (form submit) button with this label."""
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r} in {[b.label for b in at.button]}"
    return found[0]


def sign_in(kind: str, name: str, password: str = PASSWORD, at: AppTest | None = None) -> AppTest:
    """Sign in through the real streamlit-authenticator form."""
    at = at or open_dashboard()
    assert not at.exception, at.exception
    at.radio(key=auth.KIND_KEY).set_value(kind).run()
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    button(at, "Sign in").click().run()
    assert not at.exception, at.exception
    return at


def titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def go(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
