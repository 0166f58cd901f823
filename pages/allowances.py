"""Allowances: scheduled grants of tokens / picTimes per academy — list with the next run, a
preview of what the next run grants, run now (confirmed, with progress), create, edit, delete.
A thin page over backend/billing/allowances.py."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.billing import allowances
from backend.errors import ServiceError
from pages._frame import FLASH_KEY, columns_config, error_text, maker, read, require, run_action, t

me = require("admin", "super")
state = st.session_state

st.title(t("page.allowances"))


def parse_terms_text(text: str) -> list[list[str]]:
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            first, _, last = line.replace("..", ",").partition(",")
            pairs.append([first.strip(), last.strip()])
    return pairs


def optional_int(value: str) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def fields_form(prefix: str, current: dict | None = None) -> dict:
    """The allowance fields as widgets; returns the values read."""
    cur = current or {}
    c1, c2, c3 = st.columns(3)
    name = c1.text_input(t("allowances.name"), value=cur.get("name", ""), key=f"{prefix}_name")
    academy = c2.text_input(t("allowances.academy_hint"), value=cur.get("academy") or "", key=f"{prefix}_academy")
    period = c3.selectbox(
        t("allowances.period"),
        allowances.PERIODS,
        index=allowances.PERIODS.index(cur.get("period", "monthly")),
        format_func=lambda p: t(f"allowances.period.{p}"),
        key=f"{prefix}_period",
    )
    c4, c5, c6 = st.columns(3)
    tokens = c4.number_input(
        t("allowances.tokens"), min_value=0, step=1000, value=int(cur.get("tokens", 10000)), key=f"{prefix}_tokens"
    )
    pic_times = c5.number_input(
        t("allowances.pic_times"), min_value=0, step=1, value=int(cur.get("pic_times", 0)), key=f"{prefix}_pics"
    )
    mode = c6.selectbox(
        t("allowances.mode"),
        allowances.MODES,
        index=allowances.MODES.index(cur.get("mode", "top_up")),
        format_func=lambda m: t(f"allowances.mode.{m}"),
        key=f"{prefix}_mode",
    )
    c7, c8, c9 = st.columns(3)
    cap_t = c7.text_input(
        t("allowances.carry_cap_tokens"),
        value="" if cur.get("carry_cap_tokens") is None else str(cur["carry_cap_tokens"]),
        key=f"{prefix}_cap_t",
    )
    cap_p = c8.text_input(
        t("allowances.carry_cap_pic_times"),
        value="" if cur.get("carry_cap_pic_times") is None else str(cur["carry_cap_pic_times"]),
        key=f"{prefix}_cap_p",
    )
    starts_on = c9.date_input(t("allowances.starts_on"), value=None, key=f"{prefix}_starts")
    terms = st.text_area(
        t("allowances.terms"),
        value="\n".join(f"{a},{b}" for a, b in cur.get("terms", [])),
        key=f"{prefix}_terms",
        height=80,
    )
    enabled = st.checkbox(t("allowances.enabled"), value=bool(cur.get("enabled", True)), key=f"{prefix}_enabled")
    return dict(
        name=name,
        academy=academy,
        tokens=int(tokens),
        pic_times=int(pic_times),
        period=period,
        mode=mode,
        carry_cap_tokens=optional_int(cap_t),
        carry_cap_pic_times=optional_int(cap_p),
        terms=parse_terms_text(terms),
        starts_on=starts_on,
        enabled=enabled,
    )


# --- list -------------------------------------------------------------------------------------
rows = read(lambda s: allowances.listing(s))
st.subheader(t("allowances.list"))
if rows:
    frame = pd.DataFrame(rows)[
        [
            "id",
            "name",
            "academy",
            "tokens",
            "pic_times",
            "period",
            "mode",
            "carry_cap_tokens",
            "carry_cap_pic_times",
            "enabled",
            "current_period",
            "granted_this_period",
            "next_run",
        ]
    ]
    frame["academy"] = frame["academy"].fillna(t("common.all"))
    frame["period"] = frame["period"].map(lambda p: t(f"allowances.period.{p}"))
    frame["mode"] = frame["mode"].map(lambda m: t(f"allowances.mode.{m}"))
    st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="allowances_frame")
else:
    st.info(t("common.none"))

# --- preview, run now, edit, delete -------------------------------------------------------------
by_id = {r["id"]: r for r in rows}
if rows:
    picked = st.selectbox(
        t("allowances.pick"), list(by_id), format_func=lambda i: by_id[i]["name"], key="allowances_pick"
    )
    chosen = by_id[picked]
    st.subheader(t("allowances.preview"))
    try:
        preview = read(lambda s: allowances.preview(s, picked))
    except ServiceError as exc:
        st.error(error_text(exc))
        st.stop()
    if preview.period_key is None:
        st.info(t("allowances.preview_none"))
    else:
        when = t("allowances.due_now") if preview.pending else f"{preview.starts_at:%Y-%m-%d %H:%M} UTC"
        st.write(
            t(
                "allowances.preview_text",
                period=preview.period_key,
                when=when,
                users=preview.users,
                tokens=preview.tokens,
                pic_times=preview.pic_times,
            )
        )
    if preview.pending and chosen["enabled"]:
        if st.button(t("allowances.run_now"), key="allowances_run"):
            state["allowances_confirm"] = picked
        if state.get("allowances_confirm") == picked:
            st.warning(t("allowances.confirm_run", users=preview.users, name=chosen["name"], period=preview.period_key))
            yes, no = st.columns(2)
            if no.button(t("common.cancel"), key="allowances_run_cancel"):
                state.pop("allowances_confirm", None)
                st.rerun()
            if yes.button(t("common.confirm"), type="primary", key="allowances_run_confirm"):
                state.pop("allowances_confirm", None)
                bar = st.progress(0.0, text=t("allowances.running"))

                def show(done: int, total: int) -> None:
                    bar.progress(
                        min(done / total, 1.0) if total else 1.0, text=t("allowances.progress", done=done, total=total)
                    )

                try:
                    result = allowances.run_period(maker(), picked, actor=me.actor, progress=show)
                    with maker().begin() as s:
                        allowances.record_run(s, result, actor=me.actor)
                except ServiceError as exc:
                    st.error(error_text(exc))
                else:
                    st.cache_data.clear()
                    state[FLASH_KEY] = t(
                        "allowances.ran", users=result.users, tokens=result.tokens, pic_times=result.pic_times
                    )
                    st.rerun()

    with st.expander(t("allowances.edit")):
        with st.form(f"allowances_edit_{picked}"):
            values = fields_form(f"allowances_edit_{picked}", chosen)
            if st.form_submit_button(t("allowances.save")):
                clear = {
                    "clear_carry_cap_tokens": values["carry_cap_tokens"] is None,
                    "clear_carry_cap_pic_times": values["carry_cap_pic_times"] is None,
                }
                run_action(
                    lambda s: allowances.modify(s, picked, actor=me.actor, **values, **clear),
                    success=t("allowances.saved", name=values["name"]),
                )
        if st.button(t("allowances.delete"), key="allowances_delete"):
            state["allowances_delete_confirm"] = picked
        if state.get("allowances_delete_confirm") == picked:
            st.warning(t("allowances.confirm_delete", name=chosen["name"]))
            if st.button(t("common.confirm"), key="allowances_delete_confirm_button"):
                state.pop("allowances_delete_confirm", None)
                run_action(
                    lambda s: allowances.delete(s, picked, actor=me.actor),
                    success=t("allowances.deleted", name=chosen["name"]),
                )

# --- create -----------------------------------------------------------------------------------
st.subheader(t("allowances.create"))
with st.form("allowances_create"):
    values = fields_form("allowances_new")
    if st.form_submit_button(t("allowances.create"), type="primary"):
        run_action(
            lambda s: allowances.create(s, actor=me.actor, **values),
            success=t("allowances.created", name=values["name"].strip()),
        )
