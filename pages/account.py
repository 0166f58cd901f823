"""My account: balance (users), change password (revokes every other session)."""

from __future__ import annotations

import streamlit as st

from backend.billing import quota
from backend.dashboard import admin as dashboard
from backend.dashboard import auth
from backend.errors import ServiceError
from pages._frame import FLASH_KEY, account, error_text, maker, read, settings, t

me = account()
state = st.session_state

st.title(t("page.account"))
st.caption(t("signed_in_as", name=me.name, role=t(f"role.{me.role}")))

if me.kind == "user":
    balance = read(lambda s: quota.balance(s, me.id))
    c1, c2 = st.columns(2)
    c1.metric(t("account.tokens"), f"{balance.tokens:,}")
    c2.metric(t("account.pic_times"), f"{balance.pic_times:,}")
    per_model = read(lambda s: dashboard.tokens_per_model(s, days=30, user_id=me.id))
    if per_model:
        st.subheader(t("overview.chart.per_model"))
        st.bar_chart(per_model, x="model", y="tokens", x_label=t("col.model"), y_label=t("col.tokens"), horizontal=True)

with st.form("account_password", clear_on_submit=True):
    st.subheader(t("account.change_password"))
    old = st.text_input(t("account.old_password"), type="password", key="account_old")
    new = st.text_input(t("account.new_password"), type="password", key="account_new")
    repeat = st.text_input(t("account.repeat_password"), type="password", key="account_repeat")
    if st.form_submit_button(t("account.change_password")):
        if new != repeat:
            st.error(t("account.mismatch"))
        else:
            try:
                version = auth.change_password(maker(), settings(), me, old_password=old, new_password=new)
            except ServiceError as exc:
                st.error(error_text(exc))
            else:
                # this session carries on with the new version (and a new cookie); every other is revoked
                state[auth.VERSION_KEY] = version
                state[auth.REISSUE_COOKIE_KEY] = True
                state[FLASH_KEY] = t("account.password_changed")
                st.rerun()
