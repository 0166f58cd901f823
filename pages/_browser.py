"""The generic table browser of the dashboard: filters, sort, paging and CSV export of one
whitelisted table (backend/reporting/browse.py does every part in SQL)."""

from __future__ import annotations

from datetime import date
from typing import Any

import streamlit as st

from backend.errors import ServiceError
from backend.reporting import browse
from db.session import get_sessionmaker
from pages._frame import READ_TTL, col, columns_config, db_url, error_text, read, t


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
