"""Tables: browse every whitelisted table with filters, server-side paging and sorting, CSV export."""

from __future__ import annotations

import streamlit as st

from backend.reporting import browse
from pages._browser import render_browser
from pages._frame import require, t

require("admin", "super")

st.title(t("page.tables"))
table = st.selectbox(t("tables.table"), browse.TABLES, format_func=lambda n: t(f"tables.name.{n}"), key="tables_table")
render_browser(table, key=f"tables_{table}")
