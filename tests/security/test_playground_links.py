"""Audit finding 11: a playground sign-in link signs in once, on whichever API server it
reaches, stays out of the access log, and never switches a signed-in browser to another
account without that browser's own click (no login CSRF).
Audit finding 15 (the playground's half): cross-origin credentialed requests from foreign
origins are refused; the same origin and the dashboard's origin are served."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.playground import origins
from backend.playground import session as playground
from backend.playground.gate import COOKIE_NAME
from backend.server import create_app
from db.models import PlaygroundLink
from tests.factories import make_settings, make_user
from tests.gateway.helpers import wait_for
from tests.playground.helpers import link_token

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

_replicas: dict[str, object] = {}


@pytest.fixture
def replica(db_url, tmp_path_factory):
    """A second API server on the same database (its own process state, like a replica)."""
    if db_url not in _replicas:
        _replicas[db_url] = create_app(make_settings(db_url, tmp_path_factory.mktemp("replica")))
    return _replicas[db_url]


def _signed_in_as(client: TestClient) -> str | None:
    r = client.get("/playground/config")
    return r.json()["username"] if r.status_code == 200 else None


def test_a_link_signs_in_once_on_every_server(pg_app, replica, maker, settings):  # noqa: F811
    user = make_user(maker, settings)
    token = link_token(settings, maker, "user", user.id)
    first = TestClient(pg_app)
    r = first.get(f"/playground/?token={token}&lang=en", follow_redirects=False)
    assert r.status_code == 303 and COOKIE_NAME in r.headers["set-cookie"]
    assert _signed_in_as(first) == f"user:{user.id}"
    for app in (pg_app, replica):  # a replay, on this server and on another one
        thief = TestClient(app)
        r = thief.get(f"/playground/?token={token}&lang=en", follow_redirects=False)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert "invalid or has expired" in r.text
        assert _signed_in_as(thief) is None
    # the browser that used it (the dashboard re-rendering its iframe) keeps its session
    again = first.get(f"/playground/?token={token}&lang=en", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "?lang=en"
    assert "set-cookie" not in again.headers
    assert _signed_in_as(first) == f"user:{user.id}"


def test_racing_servers_let_exactly_one_redemption_through(maker, settings):
    user = make_user(maker, settings)
    token = link_token(settings, maker, "user", user.id)
    start = threading.Barrier(8)

    def redeem(_):
        start.wait(timeout=30)
        with maker.begin() as s:  # each its own connection and transaction, as on separate servers
            return playground.redeem_link(s, settings, token)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(redeem, range(8)))
    assert [o.id for o in outcomes if o is not None] == [user.id]
    with maker() as s:
        assert s.scalar(select(func.count()).select_from(PlaygroundLink)) == 1
        assert playground.check_link_token(s, settings, token) is None


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_link_never_reaches_the_access_log(pg_app, maker, settings):  # noqa: F811
    config = uvicorn.Config(pg_app, host="127.0.0.1", port=0, log_level="info", access_log=True, lifespan="off")
    server = uvicorn.Server(config)
    capture = _Capture()
    logging.getLogger("uvicorn.access").addHandler(capture)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        user = make_user(maker, settings)
        token = link_token(settings, maker, "user", user.id)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, follow_redirects=True) as browser:
            assert browser.get(f"/playground/?token={token}&lang=en").status_code == 200
            assert browser.get(f"/playground/?lang=en&token={token}").status_code == 200  # used: the session stays
        wait_for(lambda: len([x for x in capture.lines if "token=" in x]) >= 2, timeout=10, what="the access log")
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        logging.getLogger("uvicorn.access").removeHandler(capture)
    logged = "\n".join(capture.lines)
    assert "/playground/?token=[redacted]&lang=en" in logged
    assert token not in logged and token.split(".")[2] not in logged


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action, self.fields, self.links = None, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs.get("value", "")
        elif tag == "a":
            self.links.append(attrs.get("href"))


def test_a_foreign_link_asks_before_switching_accounts(pg_app, maker, settings):  # noqa: F811
    alice = make_user(maker, settings)
    mallory = make_user(maker, settings)
    browser = TestClient(pg_app)
    browser.get(f"/playground/?token={link_token(settings, maker, 'user', alice.id)}", follow_redirects=False)
    assert _signed_in_as(browser) == f"user:{alice.id}"

    # mallory's link, opened in alice's browser (a link in a mail, an auto-submitted page…)
    foreign = link_token(settings, maker, "user", mallory.id)
    page = browser.get(f"/playground/?token={foreign}&lang=en", follow_redirects=False)
    assert page.status_code == 200 and "set-cookie" not in page.headers
    assert alice.username in page.text and mallory.username in page.text
    assert page.headers["cache-control"] == "no-store"
    assert _signed_in_as(browser) == f"user:{alice.id}"  # nothing switched
    form = _Form()
    form.feed(page.text)
    assert form.action and set(form.fields) >= {"token", "confirm"}
    assert any(href and "token" not in href for href in form.links)  # "stay signed in as alice"

    # a forged confirmation: none, another browser's, or a foreign origin's post — all refused
    other = TestClient(pg_app)
    other.get(f"/playground/?token={link_token(settings, maker, 'user', mallory.id)}", follow_redirects=False)
    other_page = other.get(f"/playground/?token={link_token(settings, maker, 'user', alice.id)}")
    other_form = _Form()
    other_form.feed(other_page.text)
    for fields, headers in (
        ({"token": foreign}, {}),
        ({"token": foreign, "confirm": "0" * 64}, {}),
        ({"token": foreign, "confirm": other_form.fields["confirm"]}, {}),
        (form.fields, {"Origin": "http://evil.example"}),
    ):
        r = browser.post(form.action, data=fields, headers=headers, follow_redirects=False)
        assert r.status_code in (400, 403) and "set-cookie" not in r.headers, (fields, headers)
        assert _signed_in_as(browser) == f"user:{alice.id}"

    # alice's own click switches, once
    r = browser.post(form.action, data=form.fields, follow_redirects=False)
    assert r.status_code == 303 and COOKIE_NAME in r.headers["set-cookie"]
    assert re.fullmatch(r"\??lang=en", r.headers["location"].split("/playground/")[-1])
    assert _signed_in_as(browser) == f"user:{mallory.id}"
    assert TestClient(pg_app).get(f"/playground/?token={foreign}", follow_redirects=False).status_code == 401


# --- finding 15: origins --------------------------------------------------------------------


def test_foreign_origins_are_refused_and_the_dashboard_and_same_origin_are_served(pg_app, maker, settings):  # noqa: F811
    user = make_user(maker, settings)
    browser = TestClient(pg_app, base_url="http://127.0.0.1:8000")
    browser.get(f"/playground/?token={link_token(settings, maker, 'user', user.id)}", follow_redirects=False)
    join = {"data": [], "fn_index": 0, "session_hash": "origin-test", "event_data": None, "trigger_id": None}
    ui = pg_app.state.settings.ui_port
    for origin in ("http://127.0.0.1:8000", f"http://127.0.0.1:{ui}"):
        r = browser.get("/playground/config", headers={"Origin": origin})
        assert r.status_code == 200, origin
        pre = browser.options(
            "/playground/gradio_api/queue/join",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        if origin != "http://127.0.0.1:8000":
            assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        assert (
            browser.post("/playground/gradio_api/queue/join", json=join, headers={"Origin": origin}).status_code == 200
        )
    for origin in ("http://localhost:9999", "http://127.0.0.1:7860", "https://evil.example", "null", "http://[::1]"):
        pre = browser.options(
            "/playground/gradio_api/queue/join",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers, origin
        for method, path in (("GET", "/playground/config"), ("POST", "/playground/gradio_api/queue/join")):
            r = browser.request(method, path, headers={"Origin": origin}, json=join if method == "POST" else None)
            assert r.status_code == 403, (origin, path)
            assert (
                "access-control-allow-origin" not in r.headers and "access-control-allow-credentials" not in r.headers
            )
    assert browser.get("/playground/config").status_code == 200  # no Origin: a navigation or same-origin GET


def test_configured_public_addresses_are_the_allowed_origins(tmp_path):
    settings = make_settings(
        "sqlite://", tmp_path, public_api_url="https://api.uni.example/", public_ui_url="https://console.uni.example"
    )

    def allowed(origin: str) -> bool:
        headers = [(b"host", b"api.uni.example"), (b"origin", origin.encode()), (b"x-forwarded-proto", b"https")]
        return origins.is_allowed(settings, {"type": "http", "scheme": "http", "headers": headers})

    assert allowed("https://api.uni.example") and allowed("https://api.uni.example:443")
    assert allowed("https://console.uni.example")
    for foreign in ("http://console.uni.example", "https://api.uni.example:8501", "https://evil.example", "null"):
        assert not allowed(foreign), foreign
