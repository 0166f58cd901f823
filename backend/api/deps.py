"""FastAPI dependencies: settings, a session per request, and the callers behind tokens
(checked by `accounts.identity`, as for the playground and the dashboard; routes get the
account's row, which the services take).

Routes own their transaction: they call `session.commit()` after the services succeed;
anything not committed is rolled back when the request ends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from backend.accounts import identity
from backend.accounts import service as accounts
from backend.accounts.identity import Principal
from backend.accounts.service import NewPassword
from backend.config import Settings
from backend.errors import ServiceError, forbidden, unauthorized
from db.models import Admin, User


async def get_settings(request: Request) -> Settings:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(request: Request) -> str | None:
    return identity.bearer_token(request.headers.get("authorization"))


def require_bearer(request: Request) -> str:
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing Authorization: Bearer token")
    return token


def _row(session: Session, principal: Principal) -> Any:
    # the row `authenticate_token` read is in the session's identity map: no second query
    return identity.account_row(session, principal.kind, principal.id)


def admin_from_token(session: Session, settings: Settings, token: str, kind: str = "access") -> Admin:
    """The admin a valid, unrevoked admin token of type `kind` belongs to."""
    return _row(session, identity.authenticate_token(session, settings, token, kinds=("admin",), purpose=kind))


def user_from_token(session: Session, settings: Settings, token: str, kind: str = "access") -> User:
    """The active user a valid, unrevoked user token of type `kind` belongs to."""
    return _row(session, identity.authenticate_token(session, settings, token, kinds=("user",), purpose=kind))


def current_admin(request: Request, session: SessionDep, settings: SettingsDep) -> Admin:
    return admin_from_token(session, settings, require_bearer(request))


def current_super_admin(admin: Annotated[Admin, Depends(current_admin)]) -> Admin:
    if not admin.is_super:
        raise forbidden("only a super admin may do this")
    return admin


def current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    return user_from_token(session, settings, require_bearer(request))


def hashed_first(session: Session, settings: Settings, password: str | None, code: str) -> NewPassword | None:
    """A new password checked and hashed before the route writes, with no transaction open:
    the request's transaction (its token check; on SQLite BEGIN IMMEDIATE, so the write
    lock) is ended first, and the route's write opens a short one afterwards (audit
    finding 7). None for no password ("" or absent means unchanged). Read what the route
    needs of the caller's row before calling: the rollback expires it."""
    if not password:
        return None
    return new_password_first(session, settings, password, code)


def new_password_first(session: Session, settings: Settings, password: str, code: str) -> NewPassword:
    """`hashed_first` for a route where a password is required (the rules refuse "")."""
    session.rollback()
    return accounts.new_password(settings, password, code)


CurrentAdmin = Annotated[Admin, Depends(current_admin)]
CurrentSuperAdmin = Annotated[Admin, Depends(current_super_admin)]
CurrentUser = Annotated[User, Depends(current_user)]


def resolve_caller(
    request: Request,
    session: Session,
    settings: Settings,
    *,
    uuid: str | None = None,
    username: str | None = None,
    uuid_alone: bool = False,
) -> User:
    """The user behind a request: a Bearer user token, or — only with METEOR_LEGACY_UUID_AUTH
    switched on — the seed's `uuid` + `username` pair (from the body or the headers).

    `uuid_alone` is for the one call the original desktop client makes with the id and no
    name (`POST /user/get_token {token_id, user_id, user_academy}`): there the id suffices,
    as it did in the original; a name, when sent, must still match."""
    token = bearer_token(request)
    if token is not None:
        return user_from_token(session, settings, token)
    if settings.legacy_uuid_auth:
        uuid = uuid or request.headers.get("uuid")
        username = username or request.headers.get("username")
        if uuid and (username or uuid_alone):
            user = session.get(User, str(uuid))
            if user is None or (username and user.username != username):
                raise ServiceError("USER_NOT_FOUND", "no user has this uuid and username", 404)
            if user.status != "active":
                raise forbidden("this account is disabled")
            return user
    raise unauthorized("missing Authorization: Bearer token")


def client_address(request: Request) -> str | None:
    """The caller's address: the connection's peer, or — only when that peer is one of
    `METEOR_TRUSTED_PROXIES` — the right-most X-Forwarded-For hop that is not a trusted
    proxy. Anyone else's X-Forwarded-For is ignored, so it cannot rotate the address the
    login limits count."""
    peer = request.client.host if request.client else None
    trusted = request.app.state.settings.trusted_proxy_networks
    if not peer or not trusted or not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _parse_ip(hop) is not None else peer
    return hops[0] if hops else peer


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _within(value: str, networks: list) -> bool:
    address = _parse_ip(value)
    return address is not None and any(address.version == n.version and address in n for n in networks)
