"""CORS: the API families open to the configured origins without credentials; the
cookie-authenticated playground is never opened by it (METEOR_CORS_ORIGINS never reaches
/playground; the playground's own origin checks are Gradio's and tested with the playground)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from backend.api.cors import ApiCors
from backend.server import create_app
from db import migrate
from tests.factories import make_settings

APP_ORIGIN = "http://app.example:5173"
OTHER_ORIGIN = "http://evil.example"
PREFLIGHT_HEADERS = "authorization,content-type"


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cors') / 'meteor.db'}"
    migrate.upgrade(url)
    return url


def client_for(sqlite_url: str, tmp_path, *, playground: bool = False, **overrides) -> TestClient:
    settings = make_settings(sqlite_url, tmp_path, **overrides)
    return TestClient(create_app(settings, playground=playground))


def preflight(client: TestClient, path: str, origin: str, method: str = "POST"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": PREFLIGHT_HEADERS,
        },
    )


def test_default_allows_any_origin_without_credentials(sqlite_url, tmp_path):
    client = client_for(sqlite_url, tmp_path)  # METEOR_CORS_ORIGINS left at its default
    r = preflight(client, "/auth/login", APP_ORIGIN)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE"} <= methods
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "access-control-allow-credentials" not in r.headers
    # The real call's answer (here a refusal, in the seed-003 envelope) is readable by the page.
    r = client.get("/model/conversation/list", headers={"Origin": APP_ORIGIN})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


def test_listed_origin_allowed_and_other_refused(sqlite_url, tmp_path):
    client = client_for(sqlite_url, tmp_path, cors_origins=f"{APP_ORIGIN}/, http://127.0.0.1:9999")
    for path, method in (("/model/manage", "POST"), ("/model/message/7", "DELETE"), ("/v1/models", "GET")):
        r = preflight(client, path, APP_ORIGIN, method)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "access-control-allow-credentials" not in r.headers
        refused = preflight(client, path, OTHER_ORIGIN, method)
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
    ok = client.get("/healthz", headers={"Origin": APP_ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "origin" in ok.headers.get("vary", "").lower()
    other = client.get("/healthz", headers={"Origin": OTHER_ORIGIN})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_empty_setting_sends_no_cors(sqlite_url, tmp_path):
    client = client_for(sqlite_url, tmp_path, cors_origins="")
    r = preflight(client, "/model/manage", APP_ORIGIN)
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code == 405  # no route answers OPTIONS: the browser blocks the call
    r = client.get("/healthz", headers={"Origin": APP_ORIGIN})
    assert "access-control-allow-origin" not in r.headers


CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
)
PLAYGROUND_PATHS = ["/playground", "/playground/", "/playground/config", "/playground/gradio_api/queue/join"]


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() in CORS_HEADERS}


def test_cookie_paths_pass_through_untouched():
    """The middleware itself, over a stand-in app that answers every request (OPTIONS too)
    and sets no CORS header: on /playground it adds nothing and answers no preflight, for an
    allowed origin as for any other; on an API path it does both."""
    seen: list[tuple[str, str]] = []

    async def inner(scope, receive, send):
        seen.append((scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": [(b"set-cookie", b"s=1; HttpOnly")]})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(ApiCors(inner, origins=["*", APP_ORIGIN]))
    for path in PLAYGROUND_PATHS + ["/playground/gradio_api/file=x.png"]:
        for origin in (APP_ORIGIN, OTHER_ORIGIN):
            seen.clear()
            r = preflight(client, path, origin)
            assert r.status_code == 204 and seen == [("OPTIONS", path)]  # reached the playground itself
            assert cors_headers(r) == {}
            r = client.get(path, headers={"Origin": origin, "Cookie": "meteor_playground=abc"})
            assert cors_headers(r) == {}
    seen.clear()
    r = preflight(client, "/model/manage", OTHER_ORIGIN)
    assert seen == [] and r.headers["access-control-allow-origin"] == "*"
    # a path that only starts with the same letters is an API path
    assert preflight(client, "/playgroundx", OTHER_ORIGIN).headers["access-control-allow-origin"] == "*"


@pytest.fixture(scope="module")
def playground_apps(sqlite_url, tmp_path_factory) -> Iterator[tuple[TestClient, TestClient]]:
    """The same app with the playground mounted, once with CORS off and once open to all."""
    closed = make_settings(sqlite_url, tmp_path_factory.mktemp("cors-pg-off"), cors_origins="")
    opened = make_settings(sqlite_url, tmp_path_factory.mktemp("cors-pg-on"), cors_origins=f"*,{APP_ORIGIN}")
    with TestClient(create_app(closed)) as off, TestClient(create_app(opened)) as on:
        yield off, on


@pytest.mark.parametrize("origin", [APP_ORIGIN, OTHER_ORIGIN])
@pytest.mark.parametrize("path", PLAYGROUND_PATHS)
def test_api_cors_adds_nothing_to_the_playground(playground_apps, path, origin):
    """With the playground mounted, opening the API to every origin changes nothing on
    /playground: its preflights and answers (with or without the session cookie) carry
    exactly the CORS headers they carry with CORS switched off — whatever the playground's
    own origin checks decide, METEOR_CORS_ORIGINS never widens them."""
    off, on = playground_apps
    assert cors_headers(preflight(on, path, origin)) == cors_headers(preflight(off, path, origin))
    for cookie in (None, "a-session-cookie"):
        headers = {"Origin": origin} | ({"Cookie": f"meteor_playground={cookie}"} if cookie else {})
        got_on = on.get(path, headers=headers, follow_redirects=False)
        got_off = off.get(path, headers=headers, follow_redirects=False)
        assert got_on.status_code == got_off.status_code
        assert cors_headers(got_on) == cors_headers(got_off)
    # while the same app opens its API paths
    assert preflight(on, "/model/manage", origin).headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in preflight(off, "/model/manage", origin).headers
