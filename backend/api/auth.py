"""Seed-000 authentication: register, user and admin login, token refresh, logout,
password change. Logins are limited per account and per address (429)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from backend import security
from backend.api import envelope
from backend.api.deps import (
    CurrentAdmin,
    CurrentUser,
    SessionDep,
    SettingsDep,
    admin_from_token,
    client_address,
    require_bearer,
    user_from_token,
)
from backend.config import Settings
from backend.errors import ServiceError
from backend.services import accounts, ratelimit
from db.models import Admin, User

router = APIRouter(tags=["auth"])

Name = Annotated[str, Field(min_length=1, max_length=64)]
Password = Annotated[str, Field(min_length=1, max_length=128)]


class RegisterIn(BaseModel):
    username: Name
    password: Password
    email: Annotated[str, Field(max_length=128)] | None = None
    academy: Annotated[str, Field(max_length=64)] | None = None


class UserLoginIn(BaseModel):
    username: Name
    password: Password


class AdminLoginIn(BaseModel):
    admin: Name
    password: Password


class PasswordChangeIn(BaseModel):
    old_password: Password
    new_password: Password


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
        ttl=timedelta(minutes=settings.access_token_minutes),
    )
    refresh = security.issue_token(
        settings,
        subject=user.id,
        role="user",
        kind="refresh",
        version=user.token_version,
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
        ttl=timedelta(minutes=settings.access_token_minutes),
    )
    refresh = security.issue_token(
        settings,
        subject=sub,
        role="admin",
        kind="refresh",
        version=admin.token_version,
        ttl=timedelta(days=settings.refresh_token_days),
    )
    return {"access_token": access, "refresh_token": refresh}


def limited_login(
    request: Request,
    session: Session,
    settings: Settings,
    kind: str,
    name: str,
    authenticate: Callable[[], User | Admin | None],
) -> User | Admin:
    """Run `authenticate` under the brute-force limits; failures are committed even though
    the login itself fails."""
    account, address = ratelimit.login_subjects(kind, name, client_address(request))
    ratelimit.check_login_allowed(session, settings, account, address)
    subject = authenticate()
    if subject is None:
        session.rollback()
        ratelimit.record_failure(session, account, address)
        session.commit()
        raise ServiceError("LOGIN_ERROR", "wrong name or password", 401)
    ratelimit.clear_account(session, account)
    return subject


@router.post("/auth/register")
def register(body: RegisterIn, session: SessionDep, settings: SettingsDep) -> dict:
    accounts.register_user(
        session, settings, username=body.username, password=body.password, email=body.email, academy=body.academy
    )
    session.commit()
    return envelope.ok("用户注册成功")


@router.post("/auth/login")
def login(body: UserLoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    user = limited_login(
        request,
        session,
        settings,
        "user",
        body.username,
        lambda: accounts.authenticate_user(session, settings, username=body.username, password=body.password),
    )
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


@router.post("/auth/refresh")
def refresh_user(request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    """A new user access token for a user refresh token."""
    user = user_from_token(session, settings, require_bearer(request), kind="refresh")
    return envelope.ok("刷新令牌成功", access_token=user_tokens(settings, user)["access_token"])


@router.post("/auth/logout")
def logout_user(user: CurrentUser, session: SessionDep) -> dict:
    accounts.revoke_user_tokens(session, user_id=user.id)
    session.commit()
    return envelope.ok("已退出登录")


@router.post("/auth/change_password")
def change_password(body: PasswordChangeIn, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> dict:
    accounts.change_user_password(
        session, settings, user=user, old_password=body.old_password, new_password=body.new_password
    )
    session.commit()
    return envelope.ok("密码修改成功", **user_tokens(settings, user))


@router.get("/auth/me")
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


@router.post("/admin/login")
def admin_login(body: AdminLoginIn, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    admin = limited_login(
        request,
        session,
        settings,
        "admin",
        body.admin,
        lambda: accounts.authenticate_admin(session, settings, name=body.admin, password=body.password),
    )
    assert isinstance(admin, Admin)
    session.commit()
    # The original also returned its iFlytek app_id / api_key / api_secret here; never again.
    return envelope.ok("管理员登录成功", is_super=admin.is_super, **admin_tokens(settings, admin))


@router.get("/admin/refresh")
def admin_refresh(request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    admin = admin_from_token(session, settings, require_bearer(request), kind="refresh")
    return envelope.ok("刷新令牌成功", access_token=admin_tokens(settings, admin)["access_token"])


@router.post("/admin/logout")
def admin_logout(admin: CurrentAdmin, session: SessionDep) -> dict:
    accounts.revoke_admin_tokens(session, admin_id=admin.id)
    session.commit()
    return envelope.ok("已退出登录")
