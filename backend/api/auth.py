"""Seed-000 authentication: register, user and admin login, token refresh, logout,
password change. Logins are limited per account and per address (429)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from backend import security
from backend.accounts import login_limits as ratelimit
from backend.accounts import service as accounts
from backend.api import envelope
from backend.api.deps import (
    CurrentAdmin,
    CurrentUser,
    SessionDep,
    SettingsDep,
    admin_from_token,
    client_address,
    new_password_first,
    require_bearer,
    user_from_token,
)
from backend.api.schemas import seed000
from backend.api.schemas.seed000 import AdminLoginIn, PasswordChangeIn, RegisterIn, UserLoginIn
from backend.config import Settings
from backend.errors import ServiceError
from db.models import Admin, User
from db.session import read_only

router = APIRouter(tags=["auth"], responses=seed000.errors(401, 405, 413, 422))


# What the original admin app's "实例信息" card shows (APPID / APIKEY / API_SECRET).
APP_INFO = {"app_id": "meteor", "api_key": "仅保存在服务器上", "api_secret": "仅保存在服务器上"}


def wrong_login() -> ServiceError:
    return ServiceError("LOGIN_ERROR", "wrong name or password", 401)


envelope.on_invalid("REGISTER_ERROR", "/auth/register")
envelope.on_invalid("LOGIN_ERROR", "/auth/login", "/admin/login")
envelope.on_invalid("MODIFY_USER_ERROR", "/auth/change_password")


def user_tokens(settings: Settings, user: User) -> dict[str, str]:
    access = security.issue_token(
        settings,
        subject=user.id,
        role="user",
        kind="access",
        version=user.token_version,
        identity=user.identity,
        ttl=timedelta(minutes=settings.access_token_minutes),
    )
    refresh = security.issue_token(
        settings,
        subject=user.id,
        role="user",
        kind="refresh",
        version=user.token_version,
        identity=user.identity,
        ttl=timedelta(days=settings.refresh_token_days),
    )
    return {"access_token": access, "refresh_token": refresh}


def admin_tokens(settings: Settings, admin: Admin) -> dict[str, str]:
    sub = str(admin.id)
    access = security.issue_token(
        settings,
        subject=sub,
        role="admin",
        kind="access",
        version=admin.token_version,
        identity=admin.identity,
        ttl=timedelta(minutes=settings.access_token_minutes),
    )
    refresh = security.issue_token(
        settings,
        subject=sub,
        role="admin",
        kind="refresh",
        version=admin.token_version,
        identity=admin.identity,
        ttl=timedelta(days=settings.refresh_token_days),
    )
    return {"access_token": access, "refresh_token": refresh}


def limited_login(request: Request, session: Session, settings: Settings, kind: str, name: str, password: str):
    """Sign in under the login limits (backend/accounts/login_limits.py) in three short steps,
    none of them holding a transaction while bcrypt runs: a read (no write lock on SQLite),
    the admission (a short write, committed even when the login then fails), the password
    check outside any transaction, then a short write of the outcome. Returns the account
    (its changes not yet committed) or raises 401 / 429."""
    keys = ratelimit.login_keys(kind, name, client_address(request))
    session.rollback()
    read_only(session)
    found = accounts.find_credentials(session, kind, name)
    known = ratelimit.is_known(session, settings, keys)
    retry = ratelimit.is_retry(session, settings, keys, password)
    session.rollback()
    if retry:  # the same name + password failed a moment ago: the same answer, no new check
        raise wrong_login()
    ratelimit.prepare(session, settings, keys, known=known)
    session.commit()
    try:
        ratelimit.admit(session, settings, keys, known=known)
    except ServiceError:
        session.rollback()
        raise
    session.commit()
    ok, new_hash = accounts.check_credentials(settings, found, password)
    subject = accounts.signed_in_account(session, found, new_hash) if ok and found is not None else None
    if subject is None:
        session.rollback()
        ratelimit.failed(session, settings, keys, password, known=known)
        session.commit()
        raise wrong_login()
    ratelimit.succeeded(session, keys, known=known)
    return subject


@router.post("/auth/register", **seed000.answers(seed000.Seed000Ok, 409))
def register(body: RegisterIn, session: SessionDep, settings: SettingsDep) -> dict:
    password = new_password_first(session, settings, body.password, "REGISTER_ERROR")
    accounts.register_user(
        session, settings, username=body.username, password=password, email=body.email, academy=body.academy
    )
    session.commit()
    return envelope.ok("用户注册成功")


@router.post("/auth/login", **seed000.answers(seed000.UserLoginOut, 403, 429))
def login(body: UserLoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    user = limited_login(request, session, settings, "user", body.username, body.password)
    assert isinstance(user, User)
    if user.status != "active":
        raise ServiceError("LOGIN_ERROR", "this account is disabled", 403)
    session.commit()
    return envelope.ok(
        "用户登录成功",
        uuid=user.id,
        username=user.username,
        tokens=user.tokens,
        picTimes=user.pic_times,
        academy=user.academy,
        **user_tokens(settings, user),
    )


@router.post("/auth/refresh", **seed000.answers(seed000.AccessTokenOut))
def refresh_user(request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    """A new user access token for a user refresh token."""
    user = user_from_token(session, settings, require_bearer(request), kind="refresh")
    return envelope.ok("刷新令牌成功", access_token=user_tokens(settings, user)["access_token"])


@router.post("/auth/logout", **seed000.answers(seed000.Seed000Ok))
def logout_user(user: CurrentUser, session: SessionDep) -> dict:
    accounts.revoke_user_tokens(session, user_id=user.id)
    session.commit()
    return envelope.ok("已退出登录")


@router.post("/auth/change_password", **seed000.answers(seed000.TokensOut))
def change_password(body: PasswordChangeIn, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> dict:
    """Both bcrypt steps (the old password's check, the new one's hash) run with no
    transaction open; then one short write (audit finding 7)."""
    user_id, checked_hash = user.id, user.password_hash
    session.rollback()  # the token check's transaction: on SQLite it holds the write lock
    new = accounts.verify_password_change(settings, checked_hash, body.old_password, body.new_password)
    user = accounts.change_user_password(session, user_id=user_id, checked_hash=checked_hash, new=new)
    session.commit()
    return envelope.ok("密码修改成功", **user_tokens(settings, user))


@router.get("/auth/me", **seed000.answers(seed000.MeOut, 403))
def me(user: CurrentUser) -> dict:
    return envelope.ok(
        "查询成功",
        uuid=user.id,
        username=user.username,
        email=user.email,
        academy=user.academy,
        tokens=user.tokens,
        picTimes=user.pic_times,
    )


@router.post("/admin/login", **seed000.answers(seed000.AdminLoginOut, 429))
def admin_login(body: AdminLoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    admin = limited_login(request, session, settings, "admin", body.admin, body.password)
    assert isinstance(admin, Admin)
    session.commit()
    # The original answered its iFlytek app_id / api_key / api_secret here, and its admin app
    # reads `app_info.app_id` (a login without it crashes the page). The three fields stay,
    # holding no secret: provider credentials never leave the server.
    return envelope.ok("管理员登录成功", is_super=admin.is_super, app_info=APP_INFO, **admin_tokens(settings, admin))


@router.get("/admin/refresh", **seed000.answers(seed000.AccessTokenOut))
def admin_refresh(request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    admin = admin_from_token(session, settings, require_bearer(request), kind="refresh")
    return envelope.ok("刷新令牌成功", access_token=admin_tokens(settings, admin)["access_token"])


@router.post("/admin/logout", **seed000.answers(seed000.Seed000Ok))
def admin_logout(admin: CurrentAdmin, session: SessionDep) -> dict:
    accounts.revoke_admin_tokens(session, admin_id=admin.id)
    session.commit()
    return envelope.ok("已退出登录")
