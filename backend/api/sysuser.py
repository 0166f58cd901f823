"""StrangeLoop's own sign-in (`/sys/user/...`, the original Spring backend's paths), over
Meteor's accounts. Answers are in the seed-003 envelope.

| path                         | body                                   | answer `data`               |
|------------------------------|----------------------------------------|-----------------------------|
| POST /sys/user/login         | `{account, password}`                  | a Meteor user access token  |
| POST /sys/user/create        | `{account, password, passwordAgain?}`  | null (a new user, 0 tokens) |
| POST /sys/user/nowLoginUser  | — (Bearer token)                       | `{id, account, ...}`        |

The token is the same access token `/auth/login` hands out (the frontend keeps it in its
`Admin-Token` cookie and sends it as `Authorization: Bearer`), so every seed-003 path and
Meteor's quota accept it. Logins go through the same per-account and per-address limits.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from backend.api.auth import limited_login, user_tokens
from backend.api.conversations import parse_body
from backend.api.deps import CurrentUser, SessionDep, SettingsDep
from backend.api.envelope import success
from backend.errors import ServiceError
from backend.services import accounts
from backend.services.seed003 import bad_request, fmt
from db.models import User

router = APIRouter(tags=["StrangeLoop sign-in"])


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    account: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=128)]
    password_again: Annotated[str, Field(max_length=128)] | None = Field(default=None, alias="passwordAgain")


def user_public(user: User) -> dict[str, Any]:
    """What the original `nowLoginUser` answered (never the password hash)."""
    return {
        "id": user.id,
        "account": user.username,
        "name": user.username,
        "email": user.email,
        "academy": user.academy,
        "disable": 0 if user.status == "active" else 1,
        "tokens": user.tokens,
        "picTimes": user.pic_times,
        "createTime": fmt(user.created_at),
    }


@router.post("/sys/user/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, body: Annotated[Any, Body()] = None) -> dict:
    data = parse_body(AccountIn, body)
    user = limited_login(
        request,
        session,
        settings,
        "user",
        data.account,
        lambda: accounts.authenticate_user(session, settings, username=data.account, password=data.password),
    )
    assert isinstance(user, User)
    if user.status != "active":
        raise ServiceError("LOGIN_ERROR", "this account is disabled", 403)
    session.commit()
    return success(user_tokens(settings, user)["access_token"])


@router.post("/sys/user/create")
def create(session: SessionDep, settings: SettingsDep, body: Annotated[Any, Body()] = None) -> dict:
    data = parse_body(AccountIn, body)
    if data.password_again is not None and data.password_again != data.password:
        raise bad_request("the two passwords differ")
    try:
        accounts.register_user(session, settings, username=data.account, password=data.password)
    except ServiceError as exc:
        if exc.status == 422:  # a name or password the account rules refuse: a 400 in this envelope
            raise bad_request(exc.message) from None
        raise
    session.commit()
    return success(None)


@router.post("/sys/user/nowLoginUser")
def now_login_user(user: CurrentUser) -> dict:
    return success(user_public(user))
