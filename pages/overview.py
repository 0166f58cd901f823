"""Overview: headline figures and usage charts, every number one aggregate query."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from backend.dashboard import admin as dashboard
from backend.reporting import rollup as usage_rollup
from db.session import get_sessionmaker
from pages._frame import READ_TTL, col, db_url, require, t

require("admin", "super")


@st.cache_data(ttl=READ_TTL, show_spinner=False)
def figures(url: str, days: int, today: str) -> dict:
    day = datetime.fromisoformat(today).date()
    with get_sessionmaker(url).begin() as session:  # keeps the day roll-up it may write
        return {
            "overview": dashboard.overview(session, today=day),
            "per_day": dashboard.tokens_per_day(session, days=days, today=day),
            "per_model": dashboard.tokens_per_model(session, days=days, today=day),
            "per_academy": dashboard.tokens_per_academy(session, days=days, today=day),
            "top_users": dashboard.top_users(session, days=days, today=day),
        }


st.title(t("page.overview"))
days = st.select_slider(t("common.days"), options=usage_rollup.WINDOW_DAYS, value=30, key="overview_days")
data = figures(db_url(), days, datetime.now(UTC).date().isoformat())
o = data["overview"]

c = st.columns(6)
c[0].metric(t("overview.users"), f"{o.users:,}")
c[1].metric(t("overview.academies"), f"{o.academies:,}")
c[2].metric(t("overview.circulation"), f"{o.tokens_in_circulation:,}")
c[3].metric(t("overview.pic_circulation"), f"{o.pic_times_in_circulation:,}")
c[4].metric(t("overview.requests_today"), f"{o.requests_today:,}")
c[5].metric(t("overview.tokens_today"), f"{o.tokens_today:,}")

st.subheader(t("overview.chart.per_day"))
per_day = pd.DataFrame(data["per_day"], columns=["day", "tokens", "requests"])
if per_day.empty or not per_day["tokens"].any():  # a fresh install: no zero-height bars on a 0.000000 axis
    st.info(t("overview.no_usage"))
else:
    st.bar_chart(per_day, x="day", y="tokens", x_label=col("day"), y_label=col("tokens"))

left, right = st.columns(2)
with left:
    st.subheader(t("overview.chart.per_model"))
    per_model = pd.DataFrame(data["per_model"], columns=["model", "tokens", "requests"])
    if per_model.empty:
        st.info(t("overview.no_usage"))
    else:
        st.bar_chart(per_model, x="model", y="tokens", x_label=col("model"), y_label=col("tokens"), horizontal=True)
with right:
    st.subheader(t("overview.chart.per_academy"))
    per_academy = pd.DataFrame(data["per_academy"], columns=["academy", "tokens", "requests"])
    if per_academy.empty:
        st.info(t("overview.no_usage"))
    else:
        st.bar_chart(
            per_academy, x="academy", y="tokens", x_label=col("academy"), y_label=col("tokens"), horizontal=True
        )

st.subheader(t("overview.top_users"))
top = pd.DataFrame(data["top_users"], columns=["username", "academy", "tokens", "requests"])
if top.empty:
    st.info(t("overview.no_usage"))
else:
    st.dataframe(top, hide_index=True, width="stretch", column_config={c: col(c) for c in top.columns})
