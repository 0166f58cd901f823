"""Models: the persona form (base model, link type, connection, system prompt, every parameter
with its range and meaning, few-shot examples), enable / disable, clone; online connections
with the key masked and a "test connection" button."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from backend.accounts.viewer import Viewer
from backend.catalog import connections, model_admin
from backend.catalog.personas import field_help
from backend.dashboard import model_forms
from backend.dashboard.model_forms import JS_SAFE, PARAM_NAMES
from backend.errors import ServiceError
from pages._frame import columns_config, language, maker, read, require, run_action, settings, t
from pages._policy import render_prices, render_routes

me = require("admin", "super")
viewer = Viewer.of(me)
config = settings()
state = st.session_state

st.title(t("page.models"))


models = read(lambda s: model_forms.model_rows(s, viewer))
conns = read(lambda s: model_forms.connection_rows(s, config, viewer))
conn_names = {c["ai_id"]: c["ai_name"] for c in conns}

st.subheader(t("models.list"))
model_frame = pd.DataFrame(models, columns=list(model_forms.MODEL_FIELDS))
model_frame["aiol_id"] = model_frame["aiol_id"].map(lambda i: conn_names.get(i, "") if i is not None else "")
model_frame["link_type"] = model_frame["link_type"].map(lambda v: t("models.link.online" if v else "models.link.local"))
model_frame["disable"] = model_frame["disable"].astype(bool)
st.dataframe(
    model_frame,
    hide_index=True,
    width="stretch",
    column_config=columns_config(model_frame, {"ai_name": "base_model", "aiol_id": "connection"}),
)

by_id = {m["model_id"]: m for m in models}
picked = st.selectbox(
    t("models.pick"),
    [0, *by_id],
    format_func=lambda i: t("models.new") if i == 0 else by_id[i]["model_name"],
    key="models_pick",
)
form = read(lambda s: model_forms.model_form(s, config, viewer, picked)) if picked else model_forms.ModelForm()

with st.form(f"models_form_{picked}"):
    c1, c2, c3 = st.columns(3)
    name = c1.text_input(t("models.name"), value=form.model_name, key=f"models_name_{picked}")
    version = c2.text_input(t("models.version"), value=form.model_version or "", key=f"models_ver_{picked}")
    base = c3.text_input(t("models.base"), value=form.ai_name or "", key=f"models_base_{picked}")
    c4, c5 = st.columns(2)
    link_type = c4.radio(
        t("models.link_type"),
        (0, 1),
        index=form.link_type,
        format_func=lambda v: t("models.link.online" if v else "models.link.local"),
        horizontal=True,
        key=f"models_link_{picked}",
    )
    conn_ids = [None, *conn_names]
    aiol_id = c5.selectbox(
        t("models.connection"),
        conn_ids,
        index=conn_ids.index(form.aiol_id) if form.aiol_id in conn_ids else 0,
        format_func=lambda i: "-" if i is None else conn_names[i],
        key=f"models_conn_{picked}",
    )
    description = st.text_input(t("models.description"), value=form.description or "", key=f"models_desc_{picked}")
    system = st.text_area(t("models.system"), value=form.system or "", key=f"models_system_{picked}")

    st.markdown(f"**{t('models.params')}**")
    values: dict[str, Any] = {}
    columns = st.columns(3)
    for i, field in enumerate(PARAM_NAMES):
        current = form.params[field]
        help_text = field_help(field, language())
        box = columns[i % 3]
        if field == "stop":
            text = box.text_input(
                field, value=", ".join(current or []), help=help_text, key=f"models_p_{field}_{picked}"
            )
            values[field] = [s.strip() for s in text.split(",") if s.strip()] or None
            continue
        bounds = model_forms.param_bounds(field)
        kind, low, high = bounds.kind, bounds.low, bounds.high
        unbounded = (low is None or low <= -JS_SAFE) and (high is None or high >= JS_SAFE)
        rng = "" if unbounded else f" [{'' if low is None else low} … {'' if high is None else high}]"
        values[field] = box.number_input(
            field + rng,
            min_value=None if low is None else kind(low),
            max_value=None if high is None else kind(high),
            value=None if current is None else kind(current),
            step=1 if kind is int else 0.01,
            help=f"{help_text} ({t('models.param_unset')}: ∅)",
            key=f"models_p_{field}_{picked}",
        )

    st.markdown(f"**{t('models.examples')}**")
    examples = st.data_editor(
        pd.DataFrame(form.examples, columns=["user_message", "model_message"]),
        num_rows="dynamic",
        width="stretch",
        hide_index=True,
        column_config={
            "user_message": st.column_config.TextColumn(t("models.example.user"), required=True),
            "model_message": st.column_config.TextColumn(t("models.example.model"), required=True),
        },
        key=f"models_examples_{picked}",
    )
    submitted = st.form_submit_button(t("common.save"), type="primary")

if submitted:
    pairs = [
        (str(r["user_message"]), str(r["model_message"]))
        for r in examples.to_dict("records")
        if isinstance(r.get("user_message"), str) and isinstance(r.get("model_message"), str)
    ]
    run_action(
        lambda s: (
            model_forms.save_model(
                s,
                viewer,
                picked or None,
                model_name=name,
                ai_name=base,
                link_type=link_type,
                description=description or None,
                model_version=version or None,
                aiol_id=aiol_id,
                system=system,
                params=values,
                examples=pairs,
            ).model_name
        ),
        success=lambda saved: t("models.saved", name=saved),
    )

if picked:
    st.divider()
    a, b = st.columns(2)
    with a:
        enabled = not form.disabled
        st.caption(t("models.enable_toggle"))
        if st.button(t("common.disable") if enabled else t("common.enable"), key="models_toggle"):
            run_action(
                lambda s: model_admin.update_model(
                    s, viewer, picked, model_admin.ModelUpdate(disable=1 if enabled else 0)
                ),
                success=t(
                    "models.toggled",
                    name=form.model_name,
                    state=t("vouchers.state.off" if enabled else "vouchers.state.on"),
                ),
            )
    with b, st.form("models_clone"):
        clone_name = st.text_input(t("models.clone_name"), value=f"{form.model_name}-copy", key="models_clone_name")
        if st.form_submit_button(t("models.clone")):
            run_action(
                lambda s: model_forms.clone_model(s, config, viewer, picked, name=clone_name).model_name,
                success=lambda made: t("models.cloned", name=made),
            )

# --- connections ---------------------------------------------------------------------------
st.divider()
st.subheader(t("models.connections"))
conn_frame = pd.DataFrame(conns, columns=list(model_forms.CONNECTION_FIELDS))
if conn_frame.empty:
    st.info(t("common.none"))
else:
    st.dataframe(
        conn_frame,
        hide_index=True,
        width="stretch",
        column_config=columns_config(conn_frame),
    )
with st.form("models_conn_add", clear_on_submit=True):
    k1, k2, k3 = st.columns(3)
    conn_name = k1.text_input(t("models.conn.name"), key="models_conn_name")
    conn_api = k2.text_input(t("models.conn.api"), key="models_conn_api")
    conn_key = k3.text_input(t("models.conn.key"), type="password", key="models_conn_key")
    k4, k5 = st.columns(2)
    protocol = k4.selectbox(t("models.conn.protocol"), connections.PROTOCOLS, key="models_conn_protocol")
    timeout = k5.number_input(
        t("models.conn.timeout"), min_value=1, max_value=connections.MAX_TIMEOUT, value=30, key="models_conn_timeout"
    )
    if st.form_submit_button(t("common.save")):
        run_action(
            lambda s: (
                connections.create_connection(
                    s,
                    config,
                    viewer,
                    ai_name=conn_name,
                    ai_api=conn_api,
                    ai_token=conn_key or None,
                    protocol=protocol,
                    timeout=int(timeout),
                ).ai_name
            ),
            success=lambda made: t("common.saved") + f": {made}",
        )

if conn_names:
    tested = st.selectbox(
        t("models.connection"), list(conn_names), format_func=conn_names.get, key="models_conn_test_pick"
    )
    if st.button(t("models.conn.test"), key="models_conn_test"):
        with st.spinner(t("models.conn.testing")):
            try:
                result = connections.probe_connection(maker(), config, viewer, tested)
            except ServiceError as exc:
                result = None
                st.error(t("models.conn.failed", detail=exc.message))
        if result is not None and result.ok:
            found = t(
                "models.conn.models_found",
                ms=result.latency_ms,
                n=len(result.models),
                names=", ".join(result.models[:10]),
            )
            st.success(t("models.conn.ok", detail=found))
        elif result is not None:
            st.error(t("models.conn.failed", detail=result.error))

render_prices(models, me.actor)  # quota policy: model and engine prices (pages/_policy.py)
render_routes(models, conns, me.actor)  # quota policy: connections per model, their health
