"""Users & quotas: search, edit tokens / picTimes / academy / status in place, bulk actions.

Every change is shown for confirmation first, then applied through the quota and account
services in one transaction (ledger + audit rows)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.accounts import service as accounts
from backend.dashboard import admin as dashboard
from backend.errors import ServiceError
from backend.reporting import browse
from pages._browser import academy_options
from pages._frame import (
    FLASH_KEY,
    col,
    db_url,
    error_text,
    read,
    require,
    run_action,
    settings,
    status_label,
    t,
)
from pages._policy import render_rate_limits

me = require("admin", "super")
state = st.session_state

st.title(t("page.users"))

# --- search --------------------------------------------------------------------------------
with st.form("users_search"):
    c1, c2, c3 = st.columns(3)
    text = c1.text_input(t("users.search"), key="users_text")
    academy = c2.selectbox(
        t("common.academy"),
        ["", *academy_options(db_url())],
        key="users_academy",
        format_func=lambda a: a or t("common.all"),
    )
    status = c3.selectbox(
        t("common.status"),
        ["", *dashboard.USER_STATUSES],
        key="users_status",
        format_func=lambda s: status_label(s) if s else t("common.all"),
    )
    searched = st.form_submit_button(t("common.search"))

query = (text.strip(), academy, status)
if searched or state.get("users_query") != query or "users_shown" not in state:
    # the rows the editor shows are pinned in session state, so edited_rows always map to them
    filters = browse.BrowseFilters(
        text=text or None, academy=academy or None, equals={"status": status} if status else {}
    )
    result = read(lambda s: browse.page(s, "users", filters, sort="username", descending=False, page_size=200))
    state["users_query"] = query
    state["users_shown"] = result.rows
    state["users_total"] = result.total
    state["users_editor_round"] = state.get("users_editor_round", 0) + 1
    state.pop("users_plan", None)

shown: list[dict] = state["users_shown"]
total = state["users_total"]
st.caption(t("users.shown", total=total, shown=len(shown)) if total > len(shown) else t("users.shown_all", total=total))
st.caption(t("users.edit_hint"))

frame = pd.DataFrame(
    [{"selected": False, **row} for row in shown],
    columns=["selected", "id", "username", "email", "academy", "tokens", "pic_times", "status", "created_at"],
)
editor_key = f"users_editor_{state['users_editor_round']}"
st.data_editor(
    frame,
    key=editor_key,
    hide_index=True,
    width="stretch",
    num_rows="fixed",
    disabled=["id", "username", "email", "created_at"],
    column_config={
        "selected": st.column_config.CheckboxColumn("✓", width="small", help=col("selected")),
        "id": None,
        "username": col("username"),
        "email": col("email"),
        "tokens": st.column_config.NumberColumn(col("tokens"), min_value=0, step=1, format="%d"),
        "pic_times": st.column_config.NumberColumn(col("pic_times"), min_value=0, step=1, format="%d"),
        "academy": st.column_config.TextColumn(col("academy"), max_chars=64),
        "status": st.column_config.SelectboxColumn(
            col("status"), options=dashboard.USER_STATUSES, format_func=status_label, required=True
        ),
        "created_at": col("created_at"),
    },
)
edited_rows: dict = state.get(editor_key, {}).get("edited_rows", {})
selected_ids = [shown[int(i)]["id"] for i, change in edited_rows.items() if change.get("selected")]
field_edits = {
    int(i): {k: v for k, v in change.items() if k != "selected"}
    for i, change in edited_rows.items()
    if any(k != "selected" for k in change)
}

if st.button(t("users.review"), key="users_review"):
    try:
        state["users_plan"] = dashboard.plan_user_edits(shown, field_edits)
    except ServiceError as exc:
        st.error(error_text(exc))
    if not state.get("users_plan"):
        st.info(t("users.no_changes"))

plan: list[dashboard.UserEdit] = state.get("users_plan") or []
if plan:
    st.subheader(t("users.pending"))

    def shown_value(name: str, value: object) -> object:
        return status_label(value) if name == "status" else value

    # "field" keeps the stored name (hidden); the person reads its translated header in "field_label"
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "username": e.username,
                    "field": name,
                    "field_label": col(name),
                    "before": shown_value(name, e.before[name]),
                    "after": shown_value(name, value),
                }
                for e in plan
                for name, value in e.after.items()
            ]
        ).astype(str),
        hide_index=True,
        width="stretch",
        column_config={
            "username": col("username"),
            "field": None,
            "field_label": col("field"),
            "before": col("before"),
            "after": col("after"),
        },
    )
    ok, cancel = st.columns(2)
    if ok.button(t("users.confirm_apply", n=len(plan)), type="primary", key="users_confirm"):
        done = run_action(
            lambda s: dashboard.apply_user_edits(s, settings(), actor=me.actor, edits=plan),
        )
        if done is not None:
            state.pop("users_shown", None)
            state[FLASH_KEY] = t("users.applied", n=done)
            st.rerun()
    if cancel.button(t("common.cancel"), key="users_cancel"):
        state.pop("users_plan", None)
        st.rerun()

# --- bulk actions --------------------------------------------------------------------------
st.divider()
st.subheader(t("users.bulk"))
actions = {
    "grant_tokens": t("users.bulk.grant"),
    "grant_pic_times": t("users.bulk.grant_pic"),
    "disable": t("users.bulk.disable"),
    "enable": t("users.bulk.enable"),
}
with st.form("users_bulk"):
    b1, b2, b3, b4 = st.columns(4)
    target = b1.radio(
        t("users.bulk.target"),
        ("selection", "academy"),
        format_func=lambda k: t(f"users.bulk.{k}"),
        key="users_bulk_target",
    )
    bulk_academy = b2.selectbox(t("common.academy"), academy_options(db_url()), key="users_bulk_academy")
    action = b3.selectbox(t("users.bulk.action"), list(actions), format_func=actions.get, key="users_bulk_action")
    amount = b4.number_input(t("users.bulk.amount"), min_value=0, step=100, value=1000, key="users_bulk_amount")
    if st.form_submit_button(t("users.bulk.preview")):
        if target == "academy":
            ids = read(lambda s: dashboard.users_in_academy(s, bulk_academy)) if bulk_academy else []
        else:
            ids = selected_ids
        state["users_bulk_plan"] = {"ids": ids, "action": action, "amount": int(amount)}

bulk = state.get("users_bulk_plan")
if bulk:
    shown_amount = bulk["amount"] if bulk["action"].startswith("grant") else ""
    st.info(t("users.bulk.preview_text", n=len(bulk["ids"]), action=actions[bulk["action"]], amount=shown_amount))
    ok, cancel = st.columns(2)
    if ok.button(t("common.confirm"), type="primary", key="users_bulk_confirm", disabled=not bulk["ids"]):
        with st.status(t("common.working"), expanded=True) as status_box:
            bar = st.progress(0.0)
            done = run_action(
                lambda s: dashboard.bulk_action(
                    s,
                    settings(),
                    actor=me.actor,
                    user_ids=bulk["ids"],
                    action=bulk["action"],
                    amount=bulk["amount"],
                    progress=lambda i, n: bar.progress(i / n),
                )
            )
            status_box.update(label=t("common.done"), state="complete" if done is not None else "error")
        if done is not None:
            state.pop("users_bulk_plan", None)
            state.pop("users_shown", None)
            state[FLASH_KEY] = t("users.bulk.applied", n=done)
            st.rerun()
    if cancel.button(t("common.cancel"), key="users_bulk_cancel"):
        state.pop("users_bulk_plan", None)
        st.rerun()

# --- a new user ----------------------------------------------------------------------------
with st.expander(t("users.create")), st.form("users_create", clear_on_submit=True):
    n1, n2, n3 = st.columns(3)
    new_name = n1.text_input(t("login.username"), key="users_new_name")
    new_password = n2.text_input(t("login.password"), type="password", key="users_new_password")
    new_academy = n3.text_input(t("common.academy"), key="users_new_academy")
    n4, n5 = st.columns(2)
    new_tokens = n4.number_input(t("account.tokens"), min_value=0, step=100, key="users_new_tokens")
    new_pics = n5.number_input(t("account.pic_times"), min_value=0, step=1, key="users_new_pics")
    if st.form_submit_button(t("common.save")):
        created = run_action(
            lambda s: (
                accounts.create_user(
                    s,
                    settings(),
                    username=new_name,
                    password=new_password,
                    academy=new_academy,
                    tokens=int(new_tokens),
                    pic_times=int(new_pics),
                    actor=me.actor,
                ).username
            ),
        )
        if created:
            state.pop("users_shown", None)
            state[FLASH_KEY] = t("users.created", name=created)
            st.rerun()

render_rate_limits(me.actor)  # quota policy: rpm / tpm per user, academy, API key (pages/_policy.py)
