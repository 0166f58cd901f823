"""Quota-policy sections other pages show with one call: model and engine prices (Models page),
spend in quota units next to raw tokens (Usage page). Thin over backend/billing/pricing.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from backend.billing import pricing
from pages._frame import columns_config, read, run_action, t


def render_prices(models: list[dict], actor: str) -> None:
    """Prompt / completion price of every model (editable in place), and the recognition
    engines' prices. `models` are the Models page's rows (model_forms.model_rows)."""
    st.subheader(t("prices.title"))
    st.caption(t("prices.hint"))
    prices = read(lambda s: pricing.model_prices(s))
    frame = pd.DataFrame(
        [
            {
                "model_id": m["model_id"],
                "model_name": m["model_name"],
                "prompt_price": prices.get(m["model_id"], pricing.UNIT).prompt,
                "completion_price": prices.get(m["model_id"], pricing.UNIT).completion,
            }
            for m in models
        ],
        columns=["model_id", "model_name", "prompt_price", "completion_price"],
    )
    edited = st.data_editor(
        frame,
        key="prices_editor",
        hide_index=True,
        width="stretch",
        num_rows="fixed",
        disabled=["model_id", "model_name"],
        column_config={
            **columns_config(frame),
            "prompt_price": st.column_config.NumberColumn(
                t("col.prompt_price"), min_value=0.0, max_value=pricing.MAX_PRICE, step=0.01, format="%.4g"
            ),
            "completion_price": st.column_config.NumberColumn(
                t("col.completion_price"), min_value=0.0, max_value=pricing.MAX_PRICE, step=0.01, format="%.4g"
            ),
        },
    )
    changed = [
        (int(new.model_id), float(new.prompt_price), float(new.completion_price))
        for old, new in zip(frame.itertuples(), edited.itertuples(), strict=True)
        if (old.prompt_price, old.completion_price) != (new.prompt_price, new.completion_price)
    ]
    if changed and st.button(t("prices.save", n=len(changed)), key="prices_save", type="primary"):

        def save(session):
            for model_id, prompt, completion in changed:
                pricing.set_model_price(session, model_id, prompt=prompt, completion=completion, actor=actor)

        run_action(save, success=t("prices.saved", n=len(changed)))

    st.markdown(f"**{t('prices.engines')}**")
    engines = read(lambda s: pricing.engine_prices(s))
    if engines:
        st.dataframe(pd.DataFrame(engines), hide_index=True, width="stretch", key="prices_engines")
    st.caption(t("prices.engines_hint"))
    with st.form("prices_engine_form"):
        c1, c2, c3 = st.columns(3)
        kind = c1.selectbox(t("prices.kind"), pricing.KINDS, format_func=lambda k: t(f"prices.kind.{k}"))
        engine = c2.text_input(t("prices.engine"), value="embedded")
        value = c3.number_input(t("prices.price"), min_value=0.0, max_value=pricing.MAX_PRICE, value=1.0)
        if st.form_submit_button(t("prices.engine_save")):
            run_action(
                lambda s: pricing.set_engine_price(s, kind, engine, price=float(value), actor=actor),
                success=t("prices.engine_saved", engine=engine.strip()),
            )


def render_spend(user_id: str | None, days: int) -> None:
    """Spend per model over the last `days` days: quota units paid and raw tokens."""
    st.subheader(t("spend.title"))
    since = datetime.now(UTC) - timedelta(days=days)
    rows = read(lambda s: pricing.spend_by_model(s, since=since, user_id=user_id))
    if not rows:
        st.info(t("overview.no_usage"))
        return
    frame = pd.DataFrame(rows)
    st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="spend_frame")


def render_rate_limits(actor: str) -> None:
    """Requests / tokens per minute for one user, a whole academy (its default), or one API key."""
    from backend.accounts import apikeys, rate_limits

    st.subheader(t("limits.title"))
    st.caption(t("limits.hint"))
    limits = read(lambda s: rate_limits.list_limits(s))
    if limits:
        frame = pd.DataFrame(limits)
        st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="limits_frame")
    with st.form("limits_form"):
        c1, c2, c3, c4 = st.columns(4)
        scope = c1.selectbox(
            t("limits.scope"), rate_limits.SCOPES, format_func=lambda s: t(f"limits.scope.{s}"), key="limits_scope"
        )
        subject = c2.text_input(t("limits.subject"), help=t("limits.subject_help"), key="limits_subject")
        rpm = c3.text_input(t("col.rpm"), key="limits_rpm")
        tpm = c4.text_input(t("col.tpm"), key="limits_tpm")
        if st.form_submit_button(t("limits.save")):
            rpm_value = int(rpm) if rpm.strip().isdigit() else None
            tpm_value = int(tpm) if tpm.strip().isdigit() else None

            def save(session):
                return rate_limits.set_limit_for(
                    session, scope=scope, subject=subject, rpm=rpm_value, tpm=tpm_value, actor=actor
                )

            run_action(save, success=t("limits.saved", subject=subject.strip()))
    keys = read(apikeys.active_keys)
    if keys:
        with st.expander(t("limits.keys")):
            st.dataframe(pd.DataFrame(keys), hide_index=True, width="stretch", key="limits_keys")


def render_key_limits(user_id: str) -> None:
    """The rate limits on this user's keys and on the user (read-only; admins set them)."""
    from backend.accounts import rate_limits

    rows = read(lambda s: rate_limits.limits_of_user(s, user_id))
    if rows:
        st.subheader(t("limits.title"))
        frame = pd.DataFrame(rows)
        st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="limits_mine")


def render_routes(models: list[dict], connections: list[dict], actor: str) -> None:
    """Several connections per model (priority, weight) and each connection's health: state,
    why it was disabled, requests / errors / p50 latency of the last hour."""
    from backend.catalog import routing

    st.subheader(t("routes.title"))
    st.caption(t("routes.hint"))
    health = read(lambda s: routing.health(s))
    if health:
        frame = pd.DataFrame(health)
        st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="routes_health")
        troubled = [h for h in health if h["state"] != "ok"]
        if troubled:
            with st.form("routes_enable"):
                picked = st.selectbox(
                    t("routes.enable_pick"),
                    [h["connection_id"] for h in troubled],
                    format_func=lambda i: next(h["name"] for h in troubled if h["connection_id"] == i),
                    key="routes_enable_pick",
                )
                if st.form_submit_button(t("routes.enable")):
                    run_action(lambda s: routing.enable(s, picked, actor=actor), success=t("routes.enabled"))
    if not models or not connections:
        return
    names = {m["model_id"]: m["model_name"] for m in models}
    conns = {c["ai_id"]: c["ai_name"] for c in connections}
    with st.form("routes_form"):
        c1, c2, c3, c4 = st.columns(4)
        model_id = c1.selectbox(t("routes.model"), list(names), format_func=names.get, key="routes_model")
        connection_id = c2.selectbox(t("routes.connection"), list(conns), format_func=conns.get, key="routes_conn")
        priority = c3.number_input(t("col.priority"), min_value=-1000, max_value=1000, value=0, key="routes_priority")
        weight = c4.number_input(t("col.weight"), min_value=1, max_value=1000, value=1, key="routes_weight")
        add, remove = st.columns(2)
        if add.form_submit_button(t("routes.save")):
            run_action(
                lambda s: routing.set_route(
                    s,
                    model_id=model_id,
                    connection_id=connection_id,
                    priority=int(priority),
                    weight=int(weight),
                    actor=actor,
                ),  # fmt: skip
                success=t("routes.saved"),
            )
        if remove.form_submit_button(t("routes.remove")):
            run_action(
                lambda s: routing.remove_route(s, model_id=model_id, connection_id=connection_id, actor=actor),
                success=t("routes.removed"),
            )
    routes = read(lambda s: routing.list_routes(s))
    if routes:
        frame = pd.DataFrame(routes)
        st.dataframe(frame, hide_index=True, width="stretch", column_config=columns_config(frame), key="routes_list")
