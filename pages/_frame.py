"""What every dashboard page shares: settings, the database, the signed-in account, strings,
one action = one transaction, and the generic table browser.

Settings are built from the `METEOR_*` environment (tests and the bench point the
dashboard at their database with `METEOR_DATABASE_URL`); the cache key is that environment,
so one process can serve several databases without mixing them up.
"""

from __future__ import annotations

import os
import runpy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.errors import ServiceError
from backend.services import browse, i18n
from backend.services.dashboard_auth import ACCOUNT_KEY, VERSION_KEY, DashboardAccount, check_session
from db.session import get_sessionmaker

if TYPE_CHECKING:  # pandas is imported by the pages that show frames: the sign-in page never needs it
    import pandas as pd

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
    maps a column to another `col.` name, e.g. a camelCase seed field) and the values of a
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


def account() -> DashboardAccount:
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


def require(*roles: str) -> DashboardAccount:
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


# --- the table browser -------------------------------------------------------------------


@st.cache_data(ttl=60, show_spinner=False)
def academy_options(url: str) -> list[str]:
    with get_sessionmaker(url)() as session:
        return browse.academies(session)


@st.cache_data(ttl=READ_TTL, show_spinner=False)
def browse_page(
    url: str,
    table: str,
    text: str | None,
    academy: str | None,
    date_from: date | None,
    date_to: date | None,
    numbers: tuple[tuple[str, float | None, float | None], ...],
    equals: tuple[tuple[str, Any], ...],
    sort: str | None,
    descending: bool,
    page: int,
    page_size: int,
) -> browse.BrowsePage:
    filters = _filters(text, academy, date_from, date_to, numbers, equals)
    with get_sessionmaker(url)() as session:
        return browse.page(session, table, filters, sort=sort, descending=descending, page=page, page_size=page_size)


def _filters(text, academy, date_from, date_to, numbers, equals) -> browse.BrowseFilters:
    return browse.BrowseFilters(
        text=text or None,
        academy=academy or None,
        date_from=date_from,
        date_to=date_to,
        numbers=tuple(browse.NumberRange(c, lo, hi) for c, lo, hi in numbers),
        equals=dict(equals),
    )


def render_browser(
    table: str,
    *,
    key: str,
    equals: dict[str, Any] | None = None,
    export: bool = True,
    page_size: int = 50,
    hide: tuple[str, ...] = (),
) -> browse.BrowsePage:
    """Filters (one form: text, academy, date range, a number range), sort, paging and CSV
    export of one whitelisted table; every part runs in SQL. Returns the page shown."""
    spec = browse.spec_for(table)
    equals_items = tuple(sorted((equals or {}).items()))
    with st.form(f"{key}_form"):
        c1, c2, c3, c4 = st.columns(4)
        text = c1.text_input(t("common.text"), key=f"{key}_text") if spec.text else None
        academy = None
        if spec.academy is not None:
            academy = c2.selectbox(
                t("common.academy"),
                ["", *academy_options(db_url())],
                key=f"{key}_academy",
                format_func=lambda a: a or t("common.all"),
            )
        date_from = date_to = None
        if spec.date is not None:
            date_from = c3.date_input(t("common.date_from"), value=None, key=f"{key}_from")
            date_to = c4.date_input(t("common.date_to"), value=None, key=f"{key}_to")
        numbers: tuple[tuple[str, float | None, float | None], ...] = ()
        if spec.numbers:
            n1, n2, n3 = st.columns(3)
            column = n1.selectbox(t("common.number_column"), spec.numbers, format_func=col, key=f"{key}_ncol")
            low = n2.number_input(t("common.min"), value=None, key=f"{key}_nmin")
            high = n3.number_input(t("common.max"), value=None, key=f"{key}_nmax")
            if low is not None or high is not None:
                numbers = ((column, low, high),)
        if st.form_submit_button(t("common.apply")):
            st.session_state[f"{key}_page"] = 1
    s1, s2, s3, s4 = st.columns(4)
    columns = [c for c in spec.columns if c not in hide]
    default_sort = spec.default_sort or spec.key
    sort = s1.selectbox(
        t("common.sort_by"), columns, index=columns.index(default_sort), format_func=col, key=f"{key}_sort"
    )
    descending = s2.toggle(t("common.descending"), value=True, key=f"{key}_desc")
    size = s3.selectbox(
        t("common.page_size"), (25, 50, 100, 200), index=(25, 50, 100, 200).index(page_size), key=f"{key}_size"
    )
    page_number = s4.number_input(t("common.page"), min_value=1, step=1, key=f"{key}_page")
    try:
        result = browse_page(
            db_url(),
            table,
            text,
            academy,
            date_from,
            date_to,
            numbers,
            equals_items,
            sort,
            descending,
            int(page_number),
            int(size),
        )
    except ServiceError as exc:
        st.error(error_text(exc))
        st.stop()
    import pandas as pd

    frame = pd.DataFrame(result.rows, columns=result.columns).drop(columns=list(hide), errors="ignore")
    if frame.empty:
        st.info(t("common.none"))
    else:
        st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key=f"{key}_frame")
    st.caption(t("common.page_of", page=result.page, pages=result.pages, total=result.total))
    if export and st.button(t("common.export_csv"), key=f"{key}_export"):
        with st.spinner(t("common.working")):
            data = read(
                lambda s: browse.export_csv(
                    s,
                    table,
                    _filters(text, academy, date_from, date_to, numbers, equals_items),
                    sort=sort,
                    descending=descending,
                )
            )
        st.download_button(
            t("common.download_csv"),
            data,
            file_name=f"{table}.csv",
            mime="text/csv",
            key=f"{key}_download",
            on_click="ignore",
        )
        st.caption(t("common.export_capped", n=browse.EXPORT_MAX_ROWS))
    return result
