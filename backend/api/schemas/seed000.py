"""Seed-000 request models and answers (`/auth`, `/admin`, `/user`): `{"code": 0, "msg": ...}`,
errors `{"code": "NAME", "msg": ...}`. Routes take these as FastAPI bodies; invalid input
is a 422 with the code `envelope.on_invalid` names for the path. The limits are those of
backend/accounts/service.py (names 1-64 characters, passwords), vouchers and apikeys."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from backend.accounts import apikeys
from backend.api.bounds import INT32_MAX
from backend.api.schemas import KeptOrNewPassword, NewPasswordText, SignInPassword, documented


class Seed000Error(BaseModel):
    """A seed-000 error: `code` names it (LOGIN_ERROR, USER_NAME_REPEAT, ...). Towards the
    original clients it comes with HTTP 200 and the real status in `X-Meteor-Status`."""

    code: str
    msg: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for seed-000 routes."""
    return documented(Seed000Error, *statuses)


def answers(model: type[BaseModel], *statuses: int) -> dict[str, Any]:
    """Route keywords documenting a fixed success shape (and these 4xx). The answer itself
    is the route's dict as it is (`response_model=None`): nothing is filtered or reordered,
    so the original clients get byte for byte what they always got."""
    return {"response_model": None, "responses": {200: {"model": model, "description": "success"}, **errors(*statuses)}}


# --- answers -------------------------------------------------------------------------------


class Seed000Ok(BaseModel):
    code: Literal[0] = 0
    msg: str


class UserOut(Seed000Ok):
    uuid: str
    username: str
    tokens: int
    picTimes: int  # noqa: N815 - the wire name
    academy: str | None


class UserLoginOut(UserOut):
    access_token: str
    refresh_token: str


class MeOut(UserOut):
    email: str | None


class TokensOut(Seed000Ok):
    access_token: str
    refresh_token: str


class AccessTokenOut(Seed000Ok):
    access_token: str


class AppInfo(BaseModel):
    """What the original admin app's card shows; never a provider secret."""

    app_id: str
    api_key: str
    api_secret: str


class AdminLoginOut(TokensOut):
    is_super: bool
    app_info: AppInfo


class RedeemOut(Seed000Ok):
    tokens: int
    picTimes: int  # noqa: N815 - the wire name
    token_name: str


# --- sign-in and registration (backend/api/auth.py) ---------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=64)]


class RegisterIn(BaseModel):
    username: Name
    password: NewPasswordText
    email: Annotated[str, Field(max_length=128)] | None = None
    academy: Annotated[str, Field(max_length=64)] | None = None


class UserLoginIn(BaseModel):
    username: Name
    password: SignInPassword


class AdminLoginIn(BaseModel):
    admin: Name
    password: SignInPassword


class PasswordChangeIn(BaseModel):
    old_password: SignInPassword
    new_password: NewPasswordText


# --- the back office (backend/api/admin.py) ----------------------------------------------

OptName = Annotated[str, Field(max_length=64)] | None
Amount = Annotated[int, Field(ge=0, le=10**15)]


class AddUserIn(BaseModel):
    username: Name
    password: NewPasswordText
    tokens: Amount = 0
    pictimes: Amount = 0
    email: Annotated[str, Field(max_length=128)] | None = None
    academy: OptName = None


class NewUserInfo(BaseModel):
    new_username: OptName = None
    new_tokens: Amount | None = None
    new_password: KeptOrNewPassword = None
    new_email: Annotated[str, Field(max_length=128)] | None = None
    new_pictimes: Amount | None = None
    new_academy: OptName = None
    new_status: Annotated[str, Field(max_length=16)] | None = None


class ModifyUserIn(BaseModel):
    target_user: Name
    new_user_info: NewUserInfo


class DeleteUserIn(BaseModel):
    target_username: Name


class AddAdminIn(BaseModel):
    admin: Name
    password: NewPasswordText


class ModifyAdminIn(BaseModel):
    target_admin: Name
    new_name: OptName = None
    new_password: KeptOrNewPassword = None


class DeleteAdminIn(BaseModel):
    target_admin: Name


class TokenLimit(BaseModel):
    tokens: Amount = 0
    pictimes: Amount = 0


def parse_token_limit(value: Any) -> TokenLimit:
    """`token_limit` as `{"tokens", "pictimes"}`, that object as a JSON string, or a number
    (string or int) meaning tokens only."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise ValueError("token_limit must be an object {tokens, pictimes}, its JSON, or a number") from None
    if isinstance(value, bool):
        raise ValueError("token_limit must be an object {tokens, pictimes} or a number")
    if isinstance(value, int):
        value = {"tokens": value}
    if not isinstance(value, dict):
        raise ValueError("token_limit must be an object {tokens, pictimes} or a number")
    return TokenLimit.model_validate(value)


class AddTokenIn(BaseModel):
    token_name: Name
    token_limit: TokenLimit = TokenLimit()
    token_range: OptName = None
    expires_at: datetime | None = None
    max_redemptions: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None

    @field_validator("token_limit", mode="before")
    @classmethod
    def _limit(cls, v: Any) -> TokenLimit:
        return parse_token_limit(v)


class NewTokenLimit(BaseModel):
    tokens: Amount | None = None
    pictimes: Amount | None = None
    new_token_range: OptName = None
    new_token_is_available: Annotated[int, Field(ge=0, le=1)] | None = None


class ModifyTokenIn(BaseModel):
    target_token: Name
    new_token_limit: NewTokenLimit = NewTokenLimit()
    new_token_range: OptName = None
    new_token_is_available: Annotated[int, Field(ge=0, le=1)] | None = None
    new_expires_at: datetime | None = None
    new_max_redemptions: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None


class DeleteTokenIn(BaseModel):
    target_token: Name


# --- vouchers (backend/api/user.py) -----------------------------------------------------


class RedeemIn(BaseModel):
    token_id: Annotated[str, Field(min_length=1, max_length=64)]
    user_id: Annotated[str, Field(max_length=32)] | None = None
    user_academy: Annotated[str, Field(max_length=64)] | None = None
    username: Annotated[str, Field(max_length=64)] | None = None


# --- API keys (backend/api/keys.py) -----------------------------------------------------

ModelName = Annotated[str, Field(min_length=1, max_length=50)]


class ApiKeyCreate(BaseModel):
    name: Annotated[str, Field(max_length=64)] = ""
    expires_at: datetime | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    allowed_models: Annotated[list[ModelName], Field(min_length=1, max_length=apikeys.MAX_ALLOWED_MODELS)] | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> ApiKeyCreate:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        return self

    def expiry(self) -> datetime | None:
        if self.expires_in_days is not None:
            return datetime.now(UTC) + timedelta(days=self.expires_in_days)
        return self.expires_at


class AdminApiKeyCreate(ApiKeyCreate):
    user_id: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    username: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _one_owner(self) -> AdminApiKeyCreate:
        if (self.user_id is None) == (self.username is None):
            raise ValueError("name the key's owner with user_id or username (one of them)")
        return self
