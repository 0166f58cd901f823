"""Model and engine prices, and the arithmetic of what a request costs in quota units.

A model's price is two multipliers of a token (`Price(prompt, completion)`, default 1.0 / 1.0):
a chat reserves `ceil(prompt_tokens × prompt + max_tokens × completion)` and settles to
`ceil(prompt_tokens × prompt + completion_tokens × completion)` at the prices captured when
it reserved (they are stored on the reservation row, so a price change in between changes
nothing, and on the ledger rows, so history is never rewritten). Arithmetic is decimal on
the prices' shortest representation: 0.1 × 10 tokens is exactly 1, never 2.

Recognition engines have one price each: picTimes per picture, tokens per minute of speech.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from backend import audit
from backend.cache import TtlCache
from backend.errors import ServiceError
from db.models import EnginePrice, ModelInfo, ModelPrice, QuotaLedger

MAX_PRICE = 10_000.0
ERROR = "PRICE_ERROR"
KINDS = ("voice", "picture")


@dataclass(frozen=True)
class Price:
    """Quota units per prompt token and per completion token."""

    prompt: float = 1.0
    completion: float = 1.0

    @property
    def is_unit(self) -> bool:
        return self.prompt == 1.0 and self.completion == 1.0


UNIT = Price()


@dataclass(frozen=True)
class Tokens:
    """Raw token counts (any object with these two attributes will do, e.g. a provider Usage)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


def _dec(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def reserve_amount(price: Price, prompt_tokens: int, max_tokens: int) -> int:
    """The most a chat can cost: prompt × p + max output × c, rounded up."""
    return _ceil(_dec(price.prompt) * max(prompt_tokens, 0) + _dec(price.completion) * max(max_tokens, 0))


def charge(price: Price, usage: Any) -> int:
    """What a chat costs: its real prompt and completion tokens at `price`, rounded up.
    `usage` has `prompt_tokens` and `completion_tokens` (None counts as 0)."""
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    return _ceil(_dec(price.prompt) * max(prompt, 0) + _dec(price.completion) * max(completion, 0))


def units(price_per_unit: float, amount: float) -> int:
    """A recognition charge: `amount` (pictures, minutes) × price, rounded up; at least 1
    when both are positive."""
    if price_per_unit <= 0 or amount <= 0:
        return 0
    return max(1, _ceil(_dec(price_per_unit) * _dec(amount)))


def _check(value: float, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ServiceError(ERROR, f"{what} must be a number", 422)
    if not 0 <= value <= MAX_PRICE:
        raise ServiceError(ERROR, f"{what} must be from 0 to {MAX_PRICE:g}", 422)
    return round(float(value), 6)


# --- model prices -----------------------------------------------------------------------------


_prices: TtlCache[Price] = TtlCache()


def model_price(session: Session, model_id: int | None) -> Price:
    """The model's price now (1.0 / 1.0 without a price row): one primary-key lookup, cached
    for `cache.TTL_SECONDS` (a change through `set_model_price` is seen at once here)."""
    if model_id is None:
        return UNIT

    def load() -> Price:
        row = session.execute(
            select(ModelPrice.prompt_price, ModelPrice.completion_price).where(ModelPrice.model_id == model_id)
        ).one_or_none()
        return UNIT if row is None else Price(float(row[0]), float(row[1]))

    return _prices.get((session.get_bind().engine, model_id), load)


def set_model_price(session: Session, model_id: int, *, prompt: float, completion: float, actor: str) -> Price:
    """Set a model's prompt and completion prices (audited). Chats in flight keep theirs."""
    name = session.scalar(select(ModelInfo.model_name).where(ModelInfo.model_id == model_id))
    if name is None:
        raise ServiceError("MODEL_ERROR", f"model {model_id} not found", 404)
    price = Price(_check(prompt, "prompt price"), _check(completion, "completion price"))
    row = session.get(ModelPrice, model_id, with_for_update=True)
    before = None if row is None else Price(row.prompt_price, row.completion_price)
    if row is None:
        row = ModelPrice(model_id=model_id)
        session.add(row)
    row.prompt_price, row.completion_price = price.prompt, price.completion
    row.updated_by, row.updated_at = actor[:64], datetime.now(UTC)
    session.flush()
    _prices.forget()
    audit.record(
        session,
        actor=actor,
        action="set_model_price",
        target_type="model",
        target_id=model_id,
        detail={
            "model": name,
            "prompt_price": price.prompt,
            "completion_price": price.completion,
            "before": None if before is None else [before.prompt, before.completion],
        },
    )
    return price


def model_prices(session: Session) -> dict[int, Price]:
    """Every model's price row, by model id (models without one cost 1.0 / 1.0)."""
    return {
        int(r.model_id): Price(float(r.prompt_price), float(r.completion_price))
        for r in session.execute(select(ModelPrice.model_id, ModelPrice.prompt_price, ModelPrice.completion_price))
    }


# --- recognition engine prices ----------------------------------------------------------------


def engine_price(session: Session, kind: str, engine: str) -> float | None:
    """picTimes per picture / tokens per minute of speech for the engine; None: the default."""
    value = session.scalar(select(EnginePrice.price).where(EnginePrice.kind == kind, EnginePrice.engine == engine))
    return None if value is None else float(value)


def set_engine_price(session: Session, kind: str, engine: str, *, price: float | None, actor: str) -> None:
    """Set (or with None, remove) a recognition engine's price (audited)."""
    if kind not in KINDS:
        raise ServiceError(ERROR, f"kind must be one of {', '.join(KINDS)}", 422)
    engine = (engine or "").strip()
    if not engine or len(engine) > 64:
        raise ServiceError(ERROR, "engine must be 1-64 characters", 422)
    row = session.get(EnginePrice, (kind, engine), with_for_update=True)
    if price is None:
        if row is not None:
            session.delete(row)
    else:
        value = _check(price, "price")
        if row is None:
            row = EnginePrice(kind=kind, engine=engine)
            session.add(row)
        row.price, row.updated_by, row.updated_at = value, actor[:64], datetime.now(UTC)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="set_engine_price",
        target_type="engine",
        target_id=f"{kind}:{engine}",
        detail={"kind": kind, "engine": engine, "price": price},
    )


def engine_prices(session: Session) -> list[dict[str, Any]]:
    return [
        {"kind": r.kind, "engine": r.engine, "price": float(r.price)}
        for r in session.scalars(select(EnginePrice).order_by(EnginePrice.kind, EnginePrice.engine))
    ]


# --- spend ------------------------------------------------------------------------------------


def spend_by_model(session: Session, *, since: datetime, user_id: str | None = None) -> list[dict[str, Any]]:
    """Per model since `since`: chats settled, raw prompt / completion tokens and the quota units
    they cost (what the reserve, settle and release ledger rows took, net), from the ledger."""
    kinds = ("reserve", "settle", "release")
    stmt = (
        select(
            QuotaLedger.model,
            func.sum(case((QuotaLedger.kind == "settle", 1), else_=0)),
            func.coalesce(func.sum(QuotaLedger.prompt_tokens), 0),
            func.coalesce(func.sum(QuotaLedger.completion_tokens), 0),
            func.coalesce(-func.sum(QuotaLedger.delta_tokens), 0),
            func.coalesce(-func.sum(QuotaLedger.delta_pic_times), 0),
        )
        .where(QuotaLedger.created_at >= since, QuotaLedger.kind.in_(kinds), QuotaLedger.model.is_not(None))
        .group_by(QuotaLedger.model)
        .order_by(QuotaLedger.model)
    )
    if user_id is not None:
        stmt = stmt.where(QuotaLedger.user_id == user_id)
    return [
        {
            "model": r[0],
            "requests": int(r[1] or 0),
            "prompt_tokens": int(r[2]),
            "completion_tokens": int(r[3]),
            "raw_tokens": int(r[2]) + int(r[3]),
            "spent_tokens": int(r[4]),
            "spent_pic_times": int(r[5]),
        }
        for r in session.execute(stmt)
    ]
