"""Usage & audit: usage rows with latency and time to first token, charts, and (admins) the audit log.
Users see only their own usage."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from backend.dashboard import admin as dashboard
from backend.reporting import rollup as usage_rollup
from db.session import get_sessionmaker
from pages._browser import render_browser
from pages._frame import READ_TTL, account, col, db_url, status_label, t
from pages._policy import render_spend

me = account()
own = me.kind == "user"


@st.cache_data(ttl=READ_TTL, show_spinner=False)
def charts(url: str, days: int, today: str, user_id: str | None) -> dict:
    day = datetime.fromisoformat(today).date()
    with get_sessionmaker(url).begin() as session:  # keeps the day roll-up it may write
        return {
            "per_day": dashboard.tokens_per_day(session, days=days, today=day, user_id=user_id),
            "status": dashboard.status_counts(session, days=days, today=day, user_id=user_id),
        }


st.title(t("page.my_usage" if own else "page.usage"))
days = st.select_slider(t("common.days"), options=usage_rollup.WINDOW_DAYS, value=30, key="usage_days")
data = charts(db_url(), days, datetime.now(UTC).date().isoformat(), me.id if own else None)
per_day = pd.DataFrame(data["per_day"], columns=["day", "requests", "latency_ms", "ttft_ms"])
used = not per_day.empty and bool(per_day["requests"].any())

left, right = st.columns(2)
with left:
    st.subheader(t("usage.chart.requests"))
    if used:
        st.bar_chart(per_day, x="day", y="requests", x_label=col("day"), y_label=col("requests"))
    else:
        st.info(t("overview.no_usage"))
with right:
    st.subheader(t("usage.chart.latency"))
    if used:  # the legend shows the series' names: translated copies of the two columns
        latency = per_day.rename(columns={"latency_ms": col("latency_ms"), "ttft_ms": col("ttft_ms")})
        st.line_chart(
            latency, x="day", y=[col("latency_ms"), col("ttft_ms")], x_label=col("day"), y_label=t("usage.ms")
        )
    else:
        st.info(t("overview.no_usage"))
st.subheader(t("usage.chart.status"))
status = pd.DataFrame(data["status"], columns=["status", "requests"])
if status.empty:
    st.info(t("overview.no_usage"))
else:
    status["status"] = status["status"].map(status_label)
    st.bar_chart(status, x="status", y="requests", x_label=col("status"), y_label=col("requests"), horizontal=True)

render_spend(me.id if own else None, days)  # quota policy: spend in quota units and raw tokens

st.subheader(t("usage.records"))
if own:
    render_browser("usage", key="usage_mine", equals={"user_id": me.id}, hide=("admin_name",))
else:
    render_browser("usage", key="usage_all")
    st.subheader(t("usage.audit"))
    render_browser("audit", key="usage_audit")
