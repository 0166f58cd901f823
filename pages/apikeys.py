"""My API keys (users): create a key for the OpenAI-compatible /v1 (shown once), revoke one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.accounts import apikeys
from pages._frame import columns_config, read, require, run_action, t
from pages._policy import render_key_limits

me = require("user")
state = st.session_state

st.title(t("page.apikeys"))

with st.form("apikeys_create", clear_on_submit=True):
    name = st.text_input(t("apikeys.name"), key="apikeys_name")
    if st.form_submit_button(t("apikeys.create")):
        made = run_action(lambda s: apikeys.create_key(s, user_id=me.id, name=name, actor=me.actor)[1])
        if made:
            state["apikeys_new"] = made

if state.get("apikeys_new"):
    st.success(t("apikeys.created"))
    st.code(state.pop("apikeys_new"), language=None)

keys = read(lambda s: [k.as_dict() for k in apikeys.list_keys(s, user_id=me.id)])
frame = pd.DataFrame(keys, columns=["id", "name", "prefix", "status", "created_at", "last_used_at", "expires_at"])
if frame.empty:
    st.info(t("common.none"))
else:
    st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame))

active = [k for k in keys if k["status"] == "active"]
if active:
    with st.form("apikeys_revoke"):
        picked = st.selectbox(
            t("apikeys.revoke"), [k["id"] for k in active], format_func=lambda i: f"#{i}", key="apikeys_pick"
        )
        if st.form_submit_button(t("apikeys.revoke")):
            run_action(
                lambda s: apikeys.revoke_key(s, key_id=picked, actor=me.actor, owner_id=me.id),
                success=t("apikeys.revoked"),
            )

render_key_limits(me.id)  # quota policy: the limits an admin set on these keys (pages/_policy.py)
