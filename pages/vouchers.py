"""Vouchers: create one or a batch, enable / disable, see who redeemed, download codes as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, time

import streamlit as st

from backend.billing import vouchers
from pages._browser import render_browser
from pages._frame import require, run_action, t

me = require("admin", "super")
state = st.session_state

st.title(t("page.vouchers"))


def codes_csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["name", "code", "tokens", "pic_times", "academy", "expires_at"])
    writer.writeheader()
    writer.writerows(rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


with st.form("vouchers_create"):
    st.subheader(t("vouchers.create"))
    c1, c2, c3 = st.columns(3)
    name = c1.text_input(t("vouchers.prefix"), key="vouchers_name")
    count = c2.number_input(t("vouchers.count"), min_value=1, max_value=1000, value=1, step=1, key="vouchers_count")
    academy = c3.text_input(t("common.academy"), key="vouchers_academy")
    c4, c5, c6 = st.columns(3)
    tokens = c4.number_input(t("vouchers.tokens"), min_value=0, step=100, value=1000, key="vouchers_tokens")
    pic_times = c5.number_input(t("vouchers.pic_times"), min_value=0, step=1, value=0, key="vouchers_pics")
    max_redemptions = c6.number_input(t("vouchers.max_redemptions"), min_value=0, step=1, key="vouchers_max")
    c7, c8 = st.columns(2)
    has_expiry = c7.checkbox(t("vouchers.has_expiry"), key="vouchers_has_expiry")
    expiry = c8.date_input(t("vouchers.expiry"), value=None, key="vouchers_expiry")
    if st.form_submit_button(t("common.save"), type="primary"):
        expires_at = datetime.combine(expiry, time.max, tzinfo=UTC) if has_expiry and expiry else None
        common = dict(
            tokens=int(tokens),
            pic_times=int(pic_times),
            academy=academy,
            actor=me.actor,
            expires_at=expires_at,
            max_redemptions=int(max_redemptions) or None,
        )

        def create(session):
            if int(count) == 1:
                made = [vouchers.create_voucher(session, name=name, **common)]
            else:
                made = vouchers.create_batch(session, prefix=name.strip(), count=int(count), **common)
            return [
                {
                    "name": v.name,
                    "code": v.id,
                    "tokens": v.tokens,
                    "pic_times": v.pic_times,
                    "academy": v.academy,
                    "expires_at": v.expires_at.strftime("%Y-%m-%d") if v.expires_at else "",
                }
                for v in made
            ]

        with st.spinner(t("common.working")):
            created = run_action(create)
        if created:
            state["vouchers_created"] = created

created = state.get("vouchers_created")
if created:
    st.success(t("vouchers.created", n=len(created)))
    st.download_button(
        t("vouchers.download_new"),
        codes_csv(created),
        file_name="vouchers.csv",
        mime="text/csv",
        key="vouchers_download_new",
        on_click="ignore",
    )

st.subheader(t("vouchers.list"))
render_browser("vouchers", key="vouchers_list")

st.subheader(t("vouchers.toggle"))
with st.form("vouchers_toggle"):
    picked = st.text_input(t("vouchers.pick"), key="vouchers_pick")
    on, off = st.columns(2)
    enable = on.form_submit_button(t("common.enable"))
    disable = off.form_submit_button(t("common.disable"))
if (enable or disable) and picked.strip():
    run_action(
        lambda s: vouchers.set_available(s, name=picked.strip(), available=bool(enable), actor=me.actor),
        success=t(
            "vouchers.toggled", name=picked.strip(), state=t("vouchers.state.on" if enable else "vouchers.state.off")
        ),
    )

if picked.strip():
    st.subheader(t("vouchers.redeemed_by"))
    render_browser("redemptions", key="vouchers_redemptions", equals={"voucher": picked.strip()}, page_size=25)
