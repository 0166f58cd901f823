"""Meteor dashboard: the sign-in gate, then `st.navigation` with exactly the pages the role may open.

A page that is not in the navigation of the signed-in role cannot be reached, not even by
its URL. Run with `make run` (or `streamlit run Home.py`); the database and secrets come
from the `METEOR_*` environment like the API server's.
"""

from __future__ import annotations

import streamlit as st
from streamlit_authenticator.utilities import LoginError

from backend.services import dashboard_auth as auth
from backend.services import i18n
from pages._frame import LANG_KEY, language, maker, settings, t

st.set_page_config(page_title="Meteor", page_icon="☄️", layout="wide")

state = st.session_state
REVOKED_KEY = "meteor_revoked_message"

with st.sidebar:
    st.selectbox(
        t("app.language"),
        i18n.LANGUAGES,
        index=i18n.LANGUAGES.index(language()),
        format_func=i18n.LANGUAGE_NAMES.get,
        key=LANG_KEY,
    )

authenticator, directory = auth.build_authenticator(settings(), maker(), state)


def forget_session(message_key: str | None = None) -> None:
    """Clear the authenticator's and Meteor's session state (the cookie is deleted too)."""
    if state.get("authentication_status"):
        authenticator.logout(location="unrendered")
    for key in (auth.ACCOUNT_KEY, auth.VERSION_KEY):
        state.pop(key, None)
    if message_key:
        state[REVOKED_KEY] = message_key


def current_account() -> auth.DashboardAccount | None:
    """The signed-in account, checked against the database on every run."""
    if not state.get("authentication_status"):
        try:
            authenticator.login(location="unrendered")  # a valid, unrevoked cookie signs in here
        except LoginError:
            forget_session("login.revoked")
            return None
    if not state.get("authentication_status"):
        return None
    known = state.get(auth.ACCOUNT_KEY)
    if known is None:
        entry = directory.get(state.get("username"))
        if entry is None:
            forget_session("login.revoked")
            return None
        known = entry["meteor_account"]
        if known.status != "active":
            forget_session("login.disabled")
            return None
        state[auth.VERSION_KEY] = known.token_version
        auth.signed_in(maker(), known.kind, known.name)
    with maker()() as session:
        checked = auth.check_session(session, known.kind, known.id, state.get(auth.VERSION_KEY, -1))
    if checked is None:
        forget_session("login.revoked")
        return None
    state[auth.ACCOUNT_KEY] = checked
    if state.pop(auth.REISSUE_COOKIE_KEY, False):
        authenticator.cookie_controller.set_cookie()  # the password changed: a cookie with the new version
    return checked


def login_page() -> None:
    st.title(t("app.title"))
    if state.get(REVOKED_KEY):
        st.warning(t(state.pop(REVOKED_KEY)))
    st.radio(
        t("login.kind"),
        auth.KINDS,
        format_func=lambda k: t(f"login.kind.{k}"),
        horizontal=True,
        key=auth.KIND_KEY,
    )
    try:
        authenticator.login(
            location="main",
            key="meteor_login",
            max_login_attempts=settings().login_max_failures_per_account,
            fields={
                "Form name": t("login.title"),
                "Username": t("login.username"),
                "Password": t("login.password"),
                "Login": t("login.submit"),
            },
        )
    except LoginError:
        st.error(t("login.locked"))
        return
    finally:
        auth.record_failures(maker(), directory)
    if state.get("authentication_status") is False:
        st.error(t("login.failed"))
    elif state.get("authentication_status"):
        # the cookie is written on the next run: a rerun now would drop the component that sets it
        state[auth.REISSUE_COOKIE_KEY] = True
        st.rerun()


def page(path: str, title_key: str, icon: str, **kwargs) -> st.Page:
    return st.Page(path, title=t(title_key), icon=icon, **kwargs)


def pages_for(role: str) -> dict[str, list[st.Page]]:
    """The navigation of each role; anything not listed here is unreachable for that role."""
    if role == "user":
        mine = [
            page("pages/account.py", "page.account", ":material/person:", default=True),
            page("pages/usage.py", "page.my_usage", ":material/monitoring:"),
            page("pages/conversations.py", "page.conversations", ":material/forum:"),
            page("pages/playground.py", "page.playground", ":material/smart_toy:"),
        ]
        try:
            import backend.services.apikeys  # noqa: F401

            mine.append(page("pages/apikeys.py", "page.apikeys", ":material/key:"))
        except ImportError:
            pass
        return {t("nav.section.mine"): mine}
    console = [
        page("pages/overview.py", "page.overview", ":material/dashboard:", default=True),
        page("pages/usage.py", "page.usage", ":material/monitoring:"),
        page("pages/playground.py", "page.playground", ":material/smart_toy:"),
    ]
    manage = [
        page("pages/tables.py", "page.tables", ":material/table_view:"),
        page("pages/users.py", "page.users", ":material/school:"),
        page("pages/vouchers.py", "page.vouchers", ":material/confirmation_number:"),
        page("pages/models.py", "page.models", ":material/psychology:"),
        page("pages/conversations.py", "page.conversations", ":material/forum:"),
    ]
    if role == "super":
        manage.append(page("pages/admins.py", "page.admins", ":material/admin_panel_settings:"))
    return {
        t("nav.section.console"): console,
        t("nav.section.manage"): manage,
        t("nav.section.mine"): [page("pages/account.py", "page.account", ":material/person:")],
    }


account = current_account()
if account is None:
    st.navigation([st.Page(login_page, title=t("login.title"), icon=":material/login:", url_path="login")]).run()
    st.stop()

with st.sidebar:
    st.caption(t("signed_in_as", name=account.name, role=t(f"role.{account.role}")))
    if st.button(t("logout"), key="meteor_logout"):
        with maker().begin() as session:
            auth.revoke(session, account)
        forget_session()
        st.rerun()

st.navigation(pages_for(account.role)).run()
