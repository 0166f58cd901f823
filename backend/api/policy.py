"""Quota policy for admins (seed-000 envelope): allowances, prices, rate limits.

    GET    /admin/allowances                 every allowance, its current period and next run
    POST   /admin/allowances                 create one
    PATCH  /admin/allowances/{id}            change some fields
    DELETE /admin/allowances/{id}            remove it (grants and ledger rows stay)
    GET    /admin/allowances/{id}/preview    what the next run grants: users, tokens, picTimes
    POST   /admin/allowances/{id}/run        apply the current period now (chunked, idempotent)
    GET    /admin/prices                     every model's prompt / completion price, engine prices
    POST   /admin/prices/model               set a model's prices (model_id or model_name)
    POST   /admin/prices/engine              set (price null: reset) a recognition engine's price
    GET    /admin/rate_limits                the limits set (per user, API key, academy default)
    POST   /admin/rate_limits                set or (rpm and tpm null) remove one
    GET    /admin/model_routes               every model's extra connections (priority, weight)
    POST   /admin/model_routes               add or change one; DELETE …/{model_id}/{connection_id}
    GET    /admin/connections/health         state, disabling reason, requests / errors / p50 (1 h)
    POST   /admin/connections/{id}/enable    clear a disabling or a cooldown

Every change and every run is audited.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from backend.accounts import rate_limits
from backend.accounts import service as accounts
from backend.accounts.identity import actor_of
from backend.api import envelope
from backend.api.deps import CurrentAdmin, SessionDep
from backend.api.schemas import seed000
from backend.billing import allowances, pricing
from backend.catalog import routing
from backend.errors import ServiceError
from db.models import ModelInfo

router = APIRouter(tags=["quota policy"], responses=seed000.errors(401, 403, 404, 405, 409, 413, 422))

Amount = Annotated[int, Field(ge=0, le=allowances.MAX_AMOUNT)]
Terms = Annotated[list[tuple[date, date]], Field(max_length=100)]

envelope.on_invalid(allowances.ERROR, "/admin/allowances")


class AllowanceIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    academy: Annotated[str, Field(max_length=64)] | None = None  # none or "": every academy
    tokens: Amount = 0
    pictimes: Amount = 0
    period: Literal["weekly", "monthly", "term"] = "monthly"
    mode: Literal["top_up", "add"] = "top_up"
    carry_cap_tokens: Amount | None = None
    carry_cap_pictimes: Amount | None = None
    terms: Terms | None = None
    starts_on: date | None = None
    enabled: bool = True


class AllowancePatch(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    academy: Annotated[str, Field(max_length=64)] | None = None
    tokens: Amount | None = None
    pictimes: Amount | None = None
    period: Literal["weekly", "monthly", "term"] | None = None
    mode: Literal["top_up", "add"] | None = None
    carry_cap_tokens: Amount | None = None
    carry_cap_pictimes: Amount | None = None
    clear_carry_caps: bool = False
    terms: Terms | None = None
    starts_on: date | None = None
    enabled: bool | None = None


def _fields(body: BaseModel) -> dict:
    data = body.model_dump()
    data["pic_times"] = data.pop("pictimes")
    data["carry_cap_pic_times"] = data.pop("carry_cap_pictimes")
    if data.get("terms") is not None:
        data["terms"] = [[a.isoformat(), b.isoformat()] for a, b in data["terms"]]
    return data


@router.get("/admin/allowances")
def list_allowances(admin: CurrentAdmin, session: SessionDep) -> dict:
    return envelope.ok("查询成功", data=allowances.listing(session))


@router.post("/admin/allowances")
def create_allowance(body: AllowanceIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    row = allowances.create(session, actor=actor_of(admin), **_fields(body))
    session.commit()
    return envelope.ok("创建成功", id=row.id)


@router.patch("/admin/allowances/{allowance_id}")
def modify_allowance(allowance_id: int, body: AllowancePatch, admin: CurrentAdmin, session: SessionDep) -> dict:
    fields = _fields(body)
    if fields.pop("clear_carry_caps"):
        fields["clear_carry_cap_tokens"] = fields["clear_carry_cap_pic_times"] = True
    allowances.modify(session, allowance_id, actor=actor_of(admin), **fields)
    session.commit()
    return envelope.ok("修改成功")


@router.delete("/admin/allowances/{allowance_id}")
def delete_allowance(allowance_id: int, admin: CurrentAdmin, session: SessionDep) -> dict:
    allowances.delete(session, allowance_id, actor=actor_of(admin))
    session.commit()
    return envelope.ok("删除成功")


@router.get("/admin/allowances/{allowance_id}/preview")
def preview_allowance(allowance_id: int, admin: CurrentAdmin, session: SessionDep) -> dict:
    p = allowances.preview(session, allowance_id)
    data = asdict(p)
    data["starts_at"] = p.starts_at.isoformat() if p.starts_at else None
    return envelope.ok("查询成功", data=data)


@router.post("/admin/allowances/{allowance_id}/run")
def run_allowance(allowance_id: int, admin: CurrentAdmin, session: SessionDep, request: Request) -> dict:
    """Apply the current period now, chunk by chunk (each its own transaction)."""
    session.close()  # the run opens its own short transactions
    maker = request.app.state.sessionmaker
    result = allowances.run_period(maker, allowance_id, actor=actor_of(admin))
    with maker.begin() as s:
        allowances.record_run(s, result, actor=actor_of(admin))
    return envelope.ok("执行成功", data=asdict(result))


# --- prices -----------------------------------------------------------------------------------

Price = Annotated[float, Field(ge=0, le=pricing.MAX_PRICE)]
envelope.on_invalid(pricing.ERROR, "/admin/prices/model", "/admin/prices/engine")


class ModelPriceIn(BaseModel):
    model_id: int | None = None
    model_name: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    prompt_price: Price = 1.0
    completion_price: Price = 1.0


class EnginePriceIn(BaseModel):
    kind: Literal["voice", "picture"]
    engine: Annotated[str, Field(min_length=1, max_length=64)]
    price: Price | None = None  # None: back to the default


@router.get("/admin/prices")
def list_prices(admin: CurrentAdmin, session: SessionDep) -> dict:
    prices = pricing.model_prices(session)
    models = [
        {
            "model_id": m.model_id,
            "model_name": m.model_name,
            "prompt_price": prices.get(m.model_id, pricing.UNIT).prompt,
            "completion_price": prices.get(m.model_id, pricing.UNIT).completion,
        }
        for m in session.scalars(select(ModelInfo).order_by(ModelInfo.model_name))
    ]
    return envelope.ok("查询成功", data={"models": models, "engines": pricing.engine_prices(session)})


@router.post("/admin/prices/model")
def set_model_price(body: ModelPriceIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    model_id = body.model_id
    if model_id is None and body.model_name is not None:
        model_id = session.scalar(select(ModelInfo.model_id).where(ModelInfo.model_name == body.model_name))
    if model_id is None:
        raise ServiceError(pricing.ERROR, "name the model with model_id or model_name", 404)
    price = pricing.set_model_price(
        session, model_id, prompt=body.prompt_price, completion=body.completion_price, actor=actor_of(admin)
    )
    session.commit()
    return envelope.ok("修改成功", data={"model_id": model_id, **asdict(price)})


@router.post("/admin/prices/engine")
def set_engine_price(body: EnginePriceIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    pricing.set_engine_price(session, body.kind, body.engine, price=body.price, actor=actor_of(admin))
    session.commit()
    return envelope.ok("修改成功")


# --- rate limits ------------------------------------------------------------------------------

Limit = Annotated[int, Field(ge=0, le=rate_limits.MAX_LIMIT)]
envelope.on_invalid(rate_limits.ERROR, "/admin/rate_limits")


class RateLimitIn(BaseModel):
    scope: Literal["user", "key", "academy"]
    subject: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # user id, key id, academy
    username: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # instead of a user id
    rpm: Limit | None = None  # both None: remove the limits
    tpm: Limit | None = None


@router.get("/admin/rate_limits")
def list_rate_limits(admin: CurrentAdmin, session: SessionDep, scope: str | None = None) -> dict:
    return envelope.ok("查询成功", data=rate_limits.list_limits(session, scope))


@router.post("/admin/rate_limits")
def set_rate_limit(body: RateLimitIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    subject = body.subject
    if body.scope == "user" and body.username is not None:
        subject = accounts.require_user_by_name(session, body.username).id
    if subject is None:
        raise ServiceError(rate_limits.ERROR, "name the subject (or for a user, the username)", 422)
    row = rate_limits.set_limit(
        session, scope=body.scope, subject=subject, rpm=body.rpm, tpm=body.tpm, actor=actor_of(admin)
    )
    session.commit()
    return envelope.ok("修改成功", data=row)


# --- connections per model (failover) ---------------------------------------------------------


class RouteIn(BaseModel):
    model_id: int
    connection_id: int
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    weight: Annotated[int, Field(ge=1, le=1000)] = 1


@router.get("/admin/model_routes")
def list_routes(admin: CurrentAdmin, session: SessionDep) -> dict:
    return envelope.ok("查询成功", data=routing.list_routes(session))


@router.post("/admin/model_routes")
def set_route(body: RouteIn, admin: CurrentAdmin, session: SessionDep) -> dict:
    routing.set_route(
        session,
        model_id=body.model_id,
        connection_id=body.connection_id,
        priority=body.priority,
        weight=body.weight,
        actor=actor_of(admin),
    )
    session.commit()
    return envelope.ok("修改成功")


@router.delete("/admin/model_routes/{model_id}/{connection_id}")
def remove_route(model_id: int, connection_id: int, admin: CurrentAdmin, session: SessionDep) -> dict:
    routing.remove_route(session, model_id=model_id, connection_id=connection_id, actor=actor_of(admin))
    session.commit()
    return envelope.ok("删除成功")


@router.get("/admin/connections/health")
def connections_health(admin: CurrentAdmin, session: SessionDep) -> dict:
    """State (ok / cooldown / disabled with the reason), requests, errors and p50 of the last hour."""
    return envelope.ok("查询成功", data=routing.health(session))


@router.post("/admin/connections/{connection_id}/enable")
def enable_connection(connection_id: int, admin: CurrentAdmin, session: SessionDep) -> dict:
    routing.enable(session, connection_id, actor=actor_of(admin))
    session.commit()
    return envelope.ok("已恢复")
