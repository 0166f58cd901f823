"""Admins (super admin only): add, rename, reset password, delete."""

from __future__ import annotations

import streamlit as st

from backend.accounts import service as accounts
from pages._browser import render_browser
from pages._frame import read, require, run_action, settings, t

me = require("super")

st.title(t("page.admins"))
render_browser("admins", key="admins_list", export=False)
names = read(accounts.admin_names)

with st.form("admins_add", clear_on_submit=True):
    st.subheader(t("admins.add"))
    c1, c2, c3 = st.columns(3)
    name = c1.text_input(t("admins.name"), key="admins_add_name")
    password = c2.text_input(t("admins.password"), type="password", key="admins_add_password")
    is_super = c3.checkbox(t("admins.is_super"), key="admins_add_super")
    if st.form_submit_button(t("common.save")):
        run_action(
            lambda s: (
                accounts.create_admin(
                    s, settings(), name=name, password=password, is_super=is_super, actor=me.actor
                ).name
            ),
            success=lambda added: t("admins.added", name=added),
        )

rename, reset, delete = st.tabs([t("admins.rename"), t("admins.reset"), t("admins.delete")])
with rename, st.form("admins_rename", clear_on_submit=True):
    target = st.selectbox(t("admins.target"), names, key="admins_rename_target")
    new_name = st.text_input(t("admins.new_name"), key="admins_rename_new")
    if st.form_submit_button(t("admins.rename")) and target:
        run_action(
            lambda s: accounts.modify_admin(s, settings(), target=target, actor=me.actor, new_name=new_name).name,
            success=lambda renamed: t("admins.renamed", name=renamed),
        )
with reset, st.form("admins_reset", clear_on_submit=True):
    target = st.selectbox(t("admins.target"), names, key="admins_reset_target")
    new_password = st.text_input(t("admins.new_password"), type="password", key="admins_reset_password")
    if st.form_submit_button(t("admins.reset")) and target:
        run_action(
            lambda s: accounts.modify_admin(s, settings(), target=target, actor=me.actor, new_password=new_password),
            success=t("admins.reset_done"),
        )
with delete, st.form("admins_delete", clear_on_submit=True):
    target = st.selectbox(t("admins.target"), [n for n in names if n != me.name], key="admins_delete_target")
    sure = st.checkbox(t("admins.delete_confirm", name=target or ""), key="admins_delete_sure")
    if st.form_submit_button(t("admins.delete"), type="primary") and target and sure:
        run_action(
            lambda s: accounts.delete_admin(s, target=target, actor=me.actor),
            success=t("admins.deleted", name=target),
        )
