"""Only signed-in Meteor accounts reach the playground: link exchange, cookie, Bearer, revocation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from backend import security
from backend.playground.gate import COOKIE_NAME
from db.models import Admin, UsageRecord, User
from tests.factories import admin_headers, make_admin, make_user, user_headers
from tests.playground.helpers import link_token

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

GRADIO_PATHS = ("/playground/config", "/playground/gradio_api/info", "/playground/gradio_api/queue/data?session_hash=x")


@pytest.fixture
def web(pg_app) -> TestClient:
    return TestClient(pg_app)


def _usage_rows(maker) -> int:
    with maker() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord))


def test_anonymous_visitors_get_a_sign_in_page_and_no_gradio_endpoint(web, maker):
    for path in ("/playground/", "/playground"):
        r = web.get(path, follow_redirects=False)
        assert r.status_code == 401
        assert "text/html" in r.headers["content-type"]
        assert "体验场只对已登录的流星用户开放" in r.text  # the default language, zh-CN
    assert "signed-in Meteor accounts" in web.get("/playground/?lang=en").text
    for path in GRADIO_PATHS:
        assert web.get(path).status_code == 401, path
    # no anonymous inference: the queue refuses the join, nothing is recorded
    r = web.post("/playground/gradio_api/queue/join", json={"data": [], "fn_index": 1, "session_hash": "anon"})
    assert r.status_code == 401
    assert r.json()["detail"]["error"] == "Not authenticated"
    assert _usage_rows(maker) == 0


def test_a_dashboard_link_is_exchanged_for_an_httponly_cookie_and_leaves_the_url(web, maker, settings):
    user = make_user(maker, settings, tokens=100)
    token = link_token(settings, maker, "user", user.id)
    r = web.get(f"/playground/?token={token}&lang=en", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "?lang=en"  # the token is gone from the address, the language stays
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "Path=/playground" in cookie
    assert "samesite=lax" in cookie.lower()
    assert token not in cookie  # a session token of its own, not the short-lived link
    page = web.get("/playground/?lang=en")  # the client now carries the cookie
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = web.get("/playground/config")
    assert config.status_code == 200
    assert config.json()["username"] == f"user:{user.id}"


def test_links_that_are_forged_expired_or_of_another_kind_are_refused(web, maker, settings):
    user = make_user(maker, settings)
    expired = security.issue_token(
        settings, subject=user.id, role="user", kind="playground", version=0, ttl=timedelta(seconds=-5)
    )
    access = security.issue_token(
        settings, subject=user.id, role="user", kind="access", version=0, ttl=timedelta(minutes=5)
    )
    forged = link_token(settings, maker, "user", user.id)[:-4] + "AAAA"
    for bad in (expired, access, forged, "not-a-token", ""):
        r = web.get("/playground/", params={"token": bad, "lang": "en"}, follow_redirects=False)
        assert r.status_code == 401, bad
        assert "invalid or has expired" in r.text
        assert "set-cookie" not in r.headers
    assert web.get("/playground/config").status_code == 401


def test_signing_out_elsewhere_revokes_the_playground_session(web, maker, settings):
    user = make_user(maker, settings)
    web.get(f"/playground/?token={link_token(settings, maker, 'user', user.id)}", follow_redirects=False)
    assert web.get("/playground/config").status_code == 200
    with maker.begin() as s:  # what a logout or a password change does
        s.execute(update(User).where(User.id == user.id).values(token_version=User.token_version + 1))
    assert web.get("/playground/config").status_code == 401
    assert web.get("/playground/", follow_redirects=False).status_code == 401
    # an old link (issued before the revocation) no longer signs in either
    old = security.issue_token(
        settings, subject=user.id, role="user", kind="playground", version=0, ttl=timedelta(minutes=5)
    )
    assert web.get(f"/playground/?token={old}", follow_redirects=False).status_code == 401


def test_a_disabled_user_is_refused_even_with_a_valid_cookie(web, maker, settings):
    user = make_user(maker, settings)
    web.get(f"/playground/?token={link_token(settings, maker, 'user', user.id)}", follow_redirects=False)
    with maker.begin() as s:
        s.execute(update(User).where(User.id == user.id).values(status="disabled"))
    assert web.get("/playground/config").status_code == 401


def test_meteor_access_tokens_work_as_bearer_for_users_and_admins(pg_app, maker, settings):
    api = TestClient(pg_app)
    user = make_user(maker, settings)
    admin = make_admin(maker, settings)
    for headers, subject in (
        (user_headers(api, user.username), f"user:{user.id}"),
        (admin_headers(api, admin.name), f"admin:{admin.id}"),
    ):
        fresh = TestClient(pg_app)  # no cookie
        r = fresh.get("/playground/config", headers=headers)
        assert r.status_code == 200
        assert r.json()["username"] == subject
        assert fresh.get("/playground/", headers=headers).status_code == 200
    # a refresh token is not an access token
    with maker() as s:
        version = s.get(Admin, admin.id).token_version
    refresh = security.issue_token(
        settings, subject=str(admin.id), role="admin", kind="refresh", version=version, ttl=timedelta(minutes=5)
    )
    refused = TestClient(pg_app).get("/playground/config", headers={"Authorization": f"Bearer {refresh}"})
    assert refused.status_code == 401


def test_an_admin_link_signs_in_as_that_admin(web, maker, settings):
    admin = make_admin(maker, settings)
    r = web.get(f"/playground/?token={link_token(settings, maker, 'admin', str(admin.id))}", follow_redirects=False)
    assert r.status_code == 303
    assert web.get("/playground/config").json()["username"] == f"admin:{admin.id}"
