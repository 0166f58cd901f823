"""Whitelisted, paged reads of admin tables, shared by the seed's query_table* endpoints
and the dashboard. Only the public columns listed here ever leave the server: no
password hash, no token version, no key hash, no encrypted provider secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from backend.errors import ServiceError
from db import models as m


@dataclass(frozen=True)
class TableSpec:
    model: type[m.Base]
    columns: dict[str, InstrumentedAttribute]  # public name -> column
    name_column: InstrumentedAttribute  # what query_table_data looks up
    order: InstrumentedAttribute


SEED_TABLES: dict[str, TableSpec] = {
    "user": TableSpec(
        m.User,
        {
            "uuid": m.User.id,
            "username": m.User.username,
            "email": m.User.email,
            "academy": m.User.academy,
            "tokens": m.User.tokens,
            "picTimes": m.User.pic_times,
            "status": m.User.status,
            "created_at": m.User.created_at,
        },
        m.User.username,
        m.User.created_at,
    ),
    "admin": TableSpec(
        m.Admin,
        {"id": m.Admin.id, "admin": m.Admin.name, "is_super": m.Admin.is_super, "created_at": m.Admin.created_at},
        m.Admin.name,
        m.Admin.id,
    ),
    "token": TableSpec(
        m.Voucher,
        {
            "token_id": m.Voucher.id,
            "token_name": m.Voucher.name,
            "tokens": m.Voucher.tokens,
            "pictimes": m.Voucher.pic_times,
            "token_range": m.Voucher.academy,
            "is_available": m.Voucher.available,
            "expires_at": m.Voucher.expires_at,
            "max_redemptions": m.Voucher.max_redemptions,
            "redeemed_count": m.Voucher.redeemed_count,
            "created_at": m.Voucher.created_at,
        },
        m.Voucher.name,
        m.Voucher.created_at,
    ),
    "ledger": TableSpec(
        m.QuotaLedger,
        {
            "id": m.QuotaLedger.id,
            "user_id": m.QuotaLedger.user_id,
            "kind": m.QuotaLedger.kind,
            "delta_tokens": m.QuotaLedger.delta_tokens,
            "delta_pic_times": m.QuotaLedger.delta_pic_times,
            "request_id": m.QuotaLedger.request_id,
            "model": m.QuotaLedger.model,
            "prompt_tokens": m.QuotaLedger.prompt_tokens,
            "completion_tokens": m.QuotaLedger.completion_tokens,
            "actor": m.QuotaLedger.actor,
            "note": m.QuotaLedger.note,
            "created_at": m.QuotaLedger.created_at,
        },
        m.QuotaLedger.request_id,
        m.QuotaLedger.id,
    ),
}


def spec_for(table: str) -> TableSpec:
    spec = SEED_TABLES.get(table)
    if spec is None:
        raise ServiceError("TABLE_NOT_FOUND", f"unknown table {table!r}; one of: {', '.join(SEED_TABLES)}", 404)
    return spec


def _row(spec: TableSpec, row: Any) -> dict[str, Any]:
    out = {}
    for name, value in zip(spec.columns, row, strict=True):
        if isinstance(value, datetime):
            value = value.strftime("%Y-%m-%d %H:%M:%S")
        elif isinstance(value, bool):
            value = int(value)
        out[name] = value
    return out


def page(session: Session, *, table: str, start: int, limit: int) -> list[dict[str, Any]]:
    """Rows [start, start + limit) of a whitelisted table, in a stable order."""
    spec = spec_for(table)
    stmt = select(*spec.columns.values()).order_by(spec.order, *spec.model.__table__.primary_key.columns)
    return [_row(spec, r) for r in session.execute(stmt.offset(start).limit(limit))]


def count(session: Session, *, table: str) -> int:
    spec = spec_for(table)
    return int(session.scalar(select(func.count()).select_from(spec.model)) or 0)


def find(session: Session, *, table: str, name: str) -> dict[str, Any] | None:
    """The row whose name (user name, admin name, voucher name) is `name`."""
    spec = spec_for(table)
    row = session.execute(select(*spec.columns.values()).where(spec.name_column == name).limit(1)).first()
    return None if row is None else _row(spec, row)
