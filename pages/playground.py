"""Playground: the Gradio app embedded, signed in as the current account by a short-lived token."""

from __future__ import annotations

import streamlit as st

from backend.dashboard import auth
from pages._frame import account, language, settings, t

me = account()
config = settings()

st.title(t("page.playground"))
if st.button(t("playground.refresh"), key="playground_refresh") or "playground_url" not in st.session_state:
    token = auth.playground_token(config, me)
    st.session_state["playground_url"] = auth.playground_url(
        config, token, language(), browser_host=st.context.headers.get("Host")
    )
url = st.session_state["playground_url"]

st.caption(t("playground.intro", minutes=max(1, config.playground_token_seconds // 60)))
st.link_button(t("playground.open"), url)
# Streamlit's iframe carries allow="...; microphone; ..." so the playground can record voice.
st.iframe(url, height=860)
