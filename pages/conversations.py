"""Conversations: search by user, model, title and date; open one and read it.
Users see only their own conversations."""

from __future__ import annotations

import streamlit as st

from backend.accounts.viewer import Viewer
from backend.chat import conversations
from backend.errors import ServiceError
from pages._browser import render_browser
from pages._frame import account, error_text, read, t

me = account()
own = me.kind == "user"
viewer = Viewer.of(me)

st.title(t("page.conversations"))
equals: dict = {"user_id": me.id} if own else {}
if not own:
    c1, c2 = st.columns(2)
    username = c1.text_input(t("conv.search_user"), key="conv_user").strip()
    model = c2.text_input(t("conv.search_model"), key="conv_model").strip()
    if username:
        equals["username"] = username
    if model:
        equals["model"] = model
shown = render_browser("conversations", key="conv_list", equals=equals, hide=("user_id",) if own else ())

ids = [row["id"] for row in shown.rows]
if ids:
    picked = st.selectbox(
        t("conv.open"),
        ids,
        format_func=lambda i: next(
            f"#{r['id']} {r['title'] or ''} ({r['model'] or '-'})" for r in shown.rows if r["id"] == i
        ),
        key="conv_pick",
    )
    try:
        messages = read(lambda s: conversations.conversation_messages(s, viewer, picked))
    except ServiceError as exc:
        st.error(error_text(exc))
        st.stop()
    st.subheader(t("conv.messages"))
    if not messages:
        st.info(t("conv.empty"))
    for message in messages:
        with st.chat_message("user" if message.role == "user" else "assistant"):
            st.markdown(message.content)
