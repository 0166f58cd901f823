"""One identity: the API, the dashboard and the playground resolve the same account to the same
Principal, and what it does is written with the same audit actor, whichever front end it came
through. On SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import jwt
from sqlalchemy import select
from starlette.requests import Request

from backend.accounts import apikeys, identity
from backend.dashboard import admin as dashboard
from backend.dashboard import auth
from backend.playground import gate
from backend.playground import session as playground
from db.models import AuditLog, QuotaLedger
from tests.factories import admin_headers, make_admin, make_user, user_headers


def _bearer(headers: dict[str, str]) -> str:
    token = identity.bearer_token(headers["Authorization"])
    assert token is not None
    return token


def _dashboard_account(maker, settings, kind: str, name: str) -> identity.Principal:
    """Who the dashboard signs in from its cookie (the cookie a sign-in writes, checked as on every run)."""
    with maker() as s:
        found = auth.find_account(s, kind, name)
        assert found is not None
        account = found[0]
        cookie = auth.encode_cookie(
            settings,
            username=name,
            kind=kind,
            version=account.token_version,
            account_id=account.id,
            identity=account.identity,
        )
        claims = jwt.decode(cookie, settings.cookie_key.get_secret_value(), algorithms=["HS256"])
        signed_in = auth.verify_cookie(s, settings, claims)
    assert signed_in is not None
    return signed_in


def _playground_account(maker, settings, dashboard_account: identity.Principal) -> identity.Principal:
    """Who the playground's gate lets in: the dashboard's sign-in link redeemed for the session
    cookie, which the gate's auth dependency reads from the request."""
    with maker.begin() as s:
        redeemed = playground.redeem_link(s, settings, auth.playground_token(settings, dashboard_account))
    assert redeemed is not None
    cookie = playground.session_token(settings, redeemed)
    request = Request({"type": "http", "headers": [(b"cookie", f"{gate.COOKIE_NAME}={cookie}".encode())]})
    account = gate.PlaygroundAuth(settings, maker).account(request)
    assert account is not None
    return account


def test_one_account_is_one_principal_in_every_front_end(client, maker, settings):
    make_user(maker, settings, username="alice", academy="Math")
    make_admin(maker, settings, name="root", is_super=True)
    for kind, name, headers in (
        ("user", "alice", user_headers(client, "alice")),
        ("admin", "root", admin_headers(client, "root")),
    ):
        with maker() as s:
            from_api = identity.resolve_token(s, settings, _bearer(headers))
        from_dashboard = _dashboard_account(maker, settings, kind, name)
        from_playground = _playground_account(maker, settings, from_dashboard)
        assert from_api == from_dashboard == from_playground
        assert from_api is not None and from_api.actor == f"{kind}:{name}"
    assert from_api.role == "super" and from_api.academy is None


def test_an_admin_action_writes_the_same_actor_through_every_front_end(client, maker, settings):
    """A quota change of one user, once through the API, once through the dashboard's users
    page service and once as the account the playground signed in: three ledger rows and three
    audit rows, all `admin:root`."""
    user = make_user(maker, settings, username="bob", tokens=10)
    make_admin(maker, settings, name="root")
    r = client.post(
        "/admin/modify_normal_user",
        json={"target_user": "bob", "new_user_info": {"new_tokens": 20}},
        headers=admin_headers(client, "root"),
    )
    assert r.json()["code"] == 0, r.text
    me = _dashboard_account(maker, settings, "admin", "root")
    edit = dashboard.UserEdit(user_id=user.id, username="bob", before={"tokens": 20}, after={"tokens": 30})
    with maker.begin() as s:
        assert dashboard.apply_user_edits(s, settings, actor=me.actor, edits=[edit]) == 1
    played = _playground_account(maker, settings, me)
    edit = dashboard.UserEdit(user_id=user.id, username="bob", before={"tokens": 30}, after={"tokens": 40})
    with maker.begin() as s:
        dashboard.apply_user_edits(s, settings, actor=played.actor, edits=[edit])
    with maker() as s:
        ledger = s.scalars(
            select(QuotaLedger.actor).where(QuotaLedger.user_id == user.id, QuotaLedger.kind == "admin_adjust")
        ).all()
        audit = s.scalars(select(AuditLog.actor).where(AuditLog.action == "modify_user")).all()
    assert list(ledger) == list(audit) == ["admin:root"] * 3


def test_a_users_action_writes_the_same_actor_through_every_front_end(client, maker, settings):
    """An API key made through the API, through the dashboard's API keys page service, and as
    the account the playground signed in: three audit rows, all `user:carol`."""
    carol = make_user(maker, settings, username="carol")
    r = client.post("/user/api_keys", json={"name": "api"}, headers=user_headers(client, "carol"))
    assert r.status_code == 200, r.text
    me = _dashboard_account(maker, settings, "user", "carol")
    played = _playground_account(maker, settings, me)
    for account, name in ((me, "dashboard"), (played, "playground")):
        with maker.begin() as s:
            apikeys.create_key(s, user_id=account.id, name=name, actor=account.actor)
    with maker() as s:
        actors = s.scalars(select(AuditLog.actor).where(AuditLog.action == "api_key.create")).all()
    assert list(actors) == ["user:carol"] * 3
    assert me.id == played.id == carol.id
