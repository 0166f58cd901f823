"""Seed-000 user endpoints: voucher redemption (`POST /user/get_token`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from backend.api import envelope
from backend.api.deps import SessionDep, SettingsDep, resolve_caller
from backend.api.schemas import seed000
from backend.api.schemas.seed000 import RedeemIn
from backend.billing import vouchers
from backend.errors import forbidden

router = APIRouter(tags=["user"], responses=seed000.errors(401, 403, 404, 405, 409, 413, 422))


envelope.on_invalid("USER_GET_TOKEN_ERROR", "/user/get_token")


@router.post("/user/get_token", **seed000.answers(seed000.RedeemOut))
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
