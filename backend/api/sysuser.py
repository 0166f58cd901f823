"""StrangeLoop's own sign-in (`/sys/user/...`, the original Spring backend's paths), over
Meteor's accounts. Answers are in the seed-003 envelope.

| path                         | body                                   | answer `data`               |
|------------------------------|----------------------------------------|-----------------------------|
| POST /sys/user/login         | `{account, password}`                  | a Meteor user access token  |
| POST /sys/user/create        | `{account, password, passwordAgain?}`  | null (a new user, 0 tokens) |
| POST /sys/user/nowLoginUser  | — (Bearer token)                       | `{id, account, ...}`        |

Errors of `login` and `create` come back as the original answered them: HTTP 200 with the
status in the body's `code` (`{code: 401, message, data: null}`). The frontend's request
interceptor clears its "加载中" overlay only on a 2xx answer, so any other status would leave
the page blocked after a mistyped password; its pages read `code`. `nowLoginUser` keeps the
real 401 (the interceptor then drops the stale token). These paths are not in the seed
document, so nothing there conflicts.

The token is the same access token `/auth/login` hands out (the frontend keeps it in its
`Admin-Token` cookie and sends it as `Authorization: Bearer`), so every seed-003 path and
Meteor's quota accept it. Logins go through the same per-account and per-address limits.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from backend.accounts import service as accounts
from backend.accounts.viewer import bad_request, fmt
from backend.api.auth import limited_login, user_tokens
from backend.api.conversations import parse_body
from backend.api.deps import CurrentUser, SessionDep, SettingsDep, new_password_first
from backend.api.envelope import success
from backend.api.schemas import json_body
from backend.api.schemas.seed003 import NowLoginUserAnswer, SignInAnswer, SignInIn, SignUpIn, answers, errors
from backend.errors import ServiceError
from db.models import User

router = APIRouter(tags=["StrangeLoop sign-in"], responses=errors(405, 413))


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


def in_body(error: ServiceError) -> JSONResponse:
    """An error as the original backend answered it: HTTP 200, the status in `code`."""
    return JSONResponse({"code": error.status, "message": error.message, "data": None}, status_code=200)


# errors come with HTTP 200, the status in `code` (see above)
IN_BODY = answers(SignInAnswer, description="success, or an error whose `code` is its status (400, 401, 403, 409, 429)")


@router.post("/sys/user/login", openapi_extra=json_body(SignInIn), **IN_BODY)
def login(
    request: Request, session: SessionDep, settings: SettingsDep, body: Annotated[Any, Body()] = None
) -> dict | JSONResponse:
    try:
        return _login(request, session, settings, body)
    except ServiceError as exc:
        return in_body(exc)


def _login(request: Request, session, settings, body: Any) -> dict:
    data = parse_body(SignInIn, body)
    user = limited_login(
        request,
        session,
        settings,
        "user",
        data.account,
        data.password,
    )
    assert isinstance(user, User)
    if user.status != "active":
        raise ServiceError("LOGIN_ERROR", "this account is disabled", 403)
    session.commit()
    return success(user_tokens(settings, user)["access_token"])


@router.post("/sys/user/create", openapi_extra=json_body(SignUpIn), **IN_BODY)
def create(session: SessionDep, settings: SettingsDep, body: Annotated[Any, Body()] = None) -> dict | JSONResponse:
    try:
        return _create(session, settings, body)
    except ServiceError as exc:
        session.rollback()
        return in_body(exc)


def _create(session, settings, body: Any) -> dict:
    data = parse_body(SignUpIn, body)
    if data.password_again is not None and data.password_again != data.password:
        raise bad_request("the two passwords differ")
    try:
        password = new_password_first(session, settings, data.password, "REGISTER_ERROR")
        accounts.register_user(session, settings, username=data.account, password=password)
    except ServiceError as exc:
        if exc.status == 422:  # a name or password the account rules refuse: a 400 in this envelope
            raise bad_request(exc.message) from None
        raise
    session.commit()
    return success(None)


@router.post("/sys/user/nowLoginUser", **answers(NowLoginUserAnswer, 401, 403))
def now_login_user(user: CurrentUser) -> dict:
    return success(user_public(user))
