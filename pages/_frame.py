"""What every dashboard page shares: settings, the database, the signed-in account, strings,
one action = one transaction (the generic table browser is pages/_browser.py).

Settings are built from the `METEOR_*` environment (tests and the bench point the
dashboard at their database with `METEOR_DATABASE_URL`); the cache key is that environment,
so one process can serve several databases without mixing them up.

Home.py imports this module before it draws the sign-in form, so SQLAlchemy and the models
are imported only once a session is opened (the form needs none of them; on a process's
first run that import would come first).
"""

from __future__ import annotations

import os
import runpy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st

from backend import i18n
from backend.accounts.identity import Principal
from backend.config import Settings
from backend.dashboard.auth import ACCOUNT_KEY, VERSION_KEY, check_session
from backend.errors import ServiceError

if TYPE_CHECKING:  # pandas is imported by the pages that show frames: the sign-in page never needs it
    import pandas as pd
    from sqlalchemy.orm import Session, sessionmaker

LANG_KEY = "meteor_language"
FLASH_KEY = "meteor_flash"
NOTICE_KEY = "meteor_notice"  # an i18n key shown as a warning on top of the start page it sent the person to
READ_TTL = 30  # seconds a read-only frame may be reused; writes clear the cache at once
HOME = Path(__file__).resolve().parent.parent / "Home.py"
_gate = threading.local()  # Streamlit runs each session's script in a thread of its own

T = TypeVar("T")


@st.cache_resource(show_spinner=False)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()


def settings() -> Settings:
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("METEOR_")))
    return _settings_for(environment)


@st.cache_resource(show_spinner=False)
def _maker_for(url: str) -> sessionmaker[Session]:
    from db.session import get_sessionmaker

    return get_sessionmaker(url)


def db_url() -> str:
    return settings().resolved_database_url


def maker() -> sessionmaker[Session]:
    """The one sessionmaker (and engine) of this dashboard process; open a session per action."""
    return _maker_for(db_url())


def language() -> str:
    return i18n.normalize(st.session_state.get(LANG_KEY) or settings().language)


def t(key: str, **values: object) -> str:
    return i18n.translate(key, language(), **values)


def error_text(exc: ServiceError) -> str:
    """A domain error in the current language, with the service's detail."""
    return t("common.error", msg=i18n.error_message(exc.code, exc.message, language()))


def col(name: str) -> str:
    """The header of a column (or chart axis) named `name` in the current language; frames keep
    the stable field names (tests, CSV exports), only what the browser shows is translated."""
    return t(f"col.{name}") if i18n.has(f"col.{name}") else name


def status_label(value: object) -> str:
    """A stored status value (active, disabled, ok, error, …) in the current language."""
    return t(f"status.{value}") if i18n.has(f"status.{value}") else str(value)


def columns_config(frame: pd.DataFrame, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """`column_config` that shows every column of `frame` under its translated header (`labels`
    maps a column to another `col.` name, e.g. `ai_name` shown as the base model) and the values of a
    `status` column translated; the frame itself keeps the stored names and values."""
    config: dict[str, Any] = {name: col((labels or {}).get(name, name)) for name in frame.columns}
    if "status" in frame.columns:
        config["status"] = st.column_config.SelectboxColumn(
            col("status"), options=sorted({str(v) for v in frame["status"].dropna()}), format_func=status_label
        )
    return config


@contextmanager
def routed() -> Iterator[None]:
    """Home.py runs the page st.navigation chose inside this: the page knows the gate ran."""
    _gate.depth = getattr(_gate, "depth", 0) + 1
    try:
        yield
    finally:
        _gate.depth -= 1


def account() -> Principal:
    """The signed-in account, re-checked against the database.

    Streamlit runs a file under pages/ by itself on a process's first run (before any
    st.navigation call it serves the pages/ folder), and AppTest does on every run. A page
    run that way did not pass Home.py's gate, so it runs Home.py instead: the sign-in form,
    or this page through the role's navigation (or the refusal) — and stops after it."""
    if not getattr(_gate, "depth", 0):
        runpy.run_path(str(HOME), run_name="__main__")
        st.stop()
    # Home.py has checked the session this run already; a page checks again (defence in depth)
    state = st.session_state
    known = state.get(ACCOUNT_KEY)
    current = None
    if known is not None:
        with maker()() as session:
            current = check_session(session, known.kind, known.id, state.get(VERSION_KEY, -1))
    if current is None:
        state.pop(ACCOUNT_KEY, None)
        if known is not None:
            st.warning(t("login.revoked"))
        st.stop()
    state[ACCOUNT_KEY] = current
    show_flash()
    notice = state.get(NOTICE_KEY)  # Home.py clears it when another page is opened
    if notice:
        st.warning(t(notice))
    return current


def require(*roles: str) -> Principal:
    """Stop the page unless the account has one of `roles` (defence in depth: the navigation
    already leaves out pages a role may not open)."""
    current = account()
    if current.role not in roles:
        st.error(t("common.permission_denied"))
        st.stop()
    return current


def run_action(action: Callable[[Session], T], *, success: str | Callable[[T], str] | None = None) -> T | None:
    """Run one write in one transaction; show a ServiceError as a message (nothing is written),
    clear the read caches after a success. With `success`, the page reruns (so everything on
    it shows the new state) and the message is shown at the top."""
    try:
        with maker().begin() as session:
            result = action(session)
    except ServiceError as exc:
        st.error(error_text(exc))
        return None
    st.cache_data.clear()
    if success:
        st.session_state[FLASH_KEY] = success(result) if callable(success) else success
        st.rerun()
    return result


def show_flash() -> None:
    """The message of the last successful action, once."""
    message = st.session_state.pop(FLASH_KEY, None)
    if message:
        st.success(message)


def read(action: Callable[[Session], T]) -> T:
    """Run a read in a short session."""
    with maker()() as session:
        return action(session)
