"""Seed-000 user endpoints: voucher redemption (`POST /user/get_token`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from backend.api import envelope
from backend.api.deps import SessionDep, SettingsDep, resolve_caller
from backend.errors import forbidden
from backend.services import vouchers

router = APIRouter(tags=["user"], responses=envelope.documented(401, 403, 404, 405, 409, 413, 422))


class RedeemIn(BaseModel):
    token_id: Annotated[str, Field(min_length=1, max_length=64)]
    user_id: Annotated[str, Field(max_length=32)] | None = None
    user_academy: Annotated[str, Field(max_length=64)] | None = None
    username: Annotated[str, Field(max_length=64)] | None = None


envelope.on_invalid("USER_GET_TOKEN_ERROR", "/user/get_token")


@router.post("/user/get_token")
def redeem_voucher(body: RedeemIn, request: Request, session: SessionDep, settings: SettingsDep) -> dict:
    """Redeem a voucher for the caller. `user_id`, when given, must be the caller; in legacy
    mode it alone names the caller, as the original desktop client sends it."""
    user = resolve_caller(request, session, settings, uuid=body.user_id, username=body.username, uuid_alone=True)
    if body.user_id and body.user_id != user.id:
        raise forbidden("user_id is not the signed-in user")
    voucher = vouchers.redeem(session, voucher_id=body.token_id, user_id=user.id, user_academy=body.user_academy)
    session.commit()
    session.refresh(user)
    return envelope.ok("兑换令牌成功", tokens=user.tokens, picTimes=user.pic_times, token_name=voucher.name)
