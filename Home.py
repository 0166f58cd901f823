"""Meteor dashboard: the sign-in gate, then `st.navigation` with exactly the pages the role may open.

A page that is not in the navigation of the signed-in role cannot be reached, not even by
its URL. Run with `make run` (or `streamlit run Home.py`); the database and secrets come
from the `METEOR_*` environment like the API server's.

Streamlit's own navigation of the `pages/` folder (which it uses on a process's first run,
before any `st.navigation` call) is hidden by `.streamlit/config.toml`
(`client.showSidebarNavigation = false`); the signed-in navigation below turns sidebar
navigation on. When Streamlit runs a page file by itself, the page's `account()` check runs
this file, so that page too only renders through this gate (pages/_frame.py).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit_authenticator.utilities import LoginError

from backend import i18n
from backend.accounts.identity import Principal
from backend.dashboard import auth
from pages._frame import LANG_KEY, NOTICE_KEY, language, maker, routed, settings, t

st.set_page_config(page_title="Meteor", page_icon="☄️", layout="wide")

state = st.session_state
REVOKED_KEY = "meteor_revoked_message"
PAGES = Path(__file__).resolve().parent / "pages"  # absolute: this file also runs with a page file as main script
# every page file's address; an address the role has no page for gets a hidden stand-in page
PAGE_PATHS = tuple(sorted(p.stem for p in PAGES.glob("*.py") if not p.stem.startswith("_")))
listed: set[str] = set()  # the page files this run's navigation opens (filled by page())

# What the page shows goes into `body`, made before the authenticator: the cookie component
# (extra-streamlit-components' CookieManager, which every Authenticate renders: an iframe
# with no visible content) then sits below the page instead of leaving an empty bar above the
# title. No CSS to hide it: st.markdown with HTML would be two more downloads before the form.
body = st.container()
# the engine is made when an account is first read: a fresh browser's form needs no database
authenticator, directory = auth.build_authenticator(settings(), lambda: maker()(), state)


def language_switch() -> None:
    """The sidebar's language switch: a radio like "sign in as" (no selectbox code for the
    browser to fetch before the sign-in form can paint). Home.py's sidebar widgets come after
    st.navigation, which gives them the same identity however Streamlit reached this file."""
    with st.sidebar:
        st.radio(
            t("app.language"),
            i18n.LANGUAGES,
            index=i18n.LANGUAGES.index(language()),
            format_func=i18n.LANGUAGE_NAMES.get,
            horizontal=True,
            key=LANG_KEY,
        )


def forget_session(message_key: str | None = None) -> None:
    """Clear the authenticator's and Meteor's session state (the cookie is deleted too)."""
    if state.get("authentication_status"):
        authenticator.logout(location="unrendered")
    for key in (auth.ACCOUNT_KEY, auth.VERSION_KEY, NOTICE_KEY):
        state.pop(key, None)
    if message_key:
        state[REVOKED_KEY] = message_key


def current_account() -> Principal | None:
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


def page(name: str, title_key: str, icon: str, **kwargs) -> st.Page:
    """The page file pages/<name>.py at the address /<name> (the start page at /)."""
    listed.add(name)
    return st.Page(PAGES / f"{name}.py", title=t(title_key), icon=icon, url_path=name, **kwargs)


def stand_ins(target, taken: set[str]) -> list[st.Page]:
    """Hidden pages at the addresses of the page files this navigation leaves out, so opening
    one (a bookmark, a typed /users) runs `target` instead of Streamlit's English "Page not
    found" box: the login form, or a switch to the role's start page with a translated notice.
    They only run `target`; the page file behind the address never runs."""
    return [
        st.Page(target, title=t("app.title"), url_path=path, visibility="hidden")
        for path in PAGE_PATHS
        if path not in taken
    ]


def with_stand_ins(sections: dict[str, list[st.Page]]) -> dict[str, list[st.Page]]:
    """The role's navigation plus a refusing stand-in at every other page address."""
    pages = [p for section in sections.values() for p in section]
    start = next(p for p in pages if p.url_path == "")

    def refused() -> None:
        state[NOTICE_KEY] = "nav.refused"
        st.switch_page(start)

    last = list(sections)[-1]
    return {**sections, last: [*sections[last], *stand_ins(refused, listed)]}


def pages_for(role: str) -> dict[str, list[st.Page]]:
    """The navigation of each role; anything not listed here is unreachable for that role."""
    if role == "user":
        mine = [
            page("account", "page.account", ":material/person:", default=True),
            page("usage", "page.my_usage", ":material/monitoring:"),
            page("conversations", "page.conversations", ":material/forum:"),
            page("playground", "page.playground", ":material/smart_toy:"),
        ]
        try:
            import backend.accounts.apikeys  # noqa: F401

            mine.append(page("apikeys", "page.apikeys", ":material/key:"))
        except ImportError:
            pass
        return {t("nav.section.mine"): mine}
    console = [
        page("overview", "page.overview", ":material/dashboard:", default=True),
        page("usage", "page.usage", ":material/monitoring:"),
        page("playground", "page.playground", ":material/smart_toy:"),
    ]
    manage = [
        page("tables", "page.tables", ":material/table_view:"),
        page("users", "page.users", ":material/school:"),
        page("vouchers", "page.vouchers", ":material/confirmation_number:"),
        page("allowances", "page.allowances", ":material/event_repeat:"),  # quota policy
        page("models", "page.models", ":material/psychology:"),
        page("conversations", "page.conversations", ":material/forum:"),
    ]
    if role == "super":
        manage.append(page("admins", "page.admins", ":material/admin_panel_settings:"))
    return {
        t("nav.section.console"): console,
        t("nav.section.manage"): manage,
        t("nav.section.mine"): [page("account", "page.account", ":material/person:")],
    }


account = current_account()
if account is None:
    sign_in = st.Page(login_page, title=t("login.title"), icon=":material/login:", url_path="login")
    signed_out = st.navigation([sign_in, *stand_ins(login_page, set())], position="hidden")
    language_switch()
    with body, routed():
        signed_out.run()
    st.stop()

st.set_option("client.showSidebarNavigation", True)  # config.toml hides it until here (see the docstring)
current = st.navigation(with_stand_ins(pages_for(account.role)), position="sidebar")
language_switch()
with st.sidebar:
    st.caption(t("signed_in_as", name=account.name, role=t(f"role.{account.role}")))
    if st.button(t("logout"), key="meteor_logout"):
        with maker().begin() as session:
            auth.revoke(session, account)
        forget_session()
        st.rerun()
if current.url_path != "":  # the refusal notice stays on the start page (across reruns) until the person moves on
    state.pop(NOTICE_KEY, None)
with body, routed():
    current.run()
