"""Generic browsing of the whitelisted tables: filters, paging, sorting and CSV export, all in SQL.

Each table is described by a `BrowseSpec`: the public columns (and only those — never a
password hash, token version, key hash or encrypted provider secret), which of them a text
search looks in, how a row belongs to an academy, which column a date range and number
ranges apply to, and the default order. A page is one `LIMIT/OFFSET` query plus one
`COUNT(*)` over the same filters; nothing loads a whole table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from backend.errors import ServiceError
from backend.reporting import rollup as usage_rollup
from db import models as m

EXPORT_MAX_ROWS = 200_000
PAGE_SIZE_MAX = 500


@dataclass(frozen=True)
class BrowseSpec:
    """How one table is browsed."""

    columns: dict[str, Any]  # public name -> column expression
    source: Any  # the FROM clause (a table or a join)
    text: tuple[str, ...] = ()  # public names a text search looks in
    academy: Any = None  # a column, or a callable(academy) -> condition
    date: str | None = None  # public name of the date-range column
    numbers: tuple[str, ...] = ()  # public names that take a number range
    key: str = "id"  # public name of the primary key (the tie-breaker of every order)
    default_sort: str | None = None  # defaults to the key, newest first


def _users_of_academy(user_id_column: Any):
    def condition(academy: str) -> ColumnElement[bool]:
        return user_id_column.in_(select(m.User.id).where(m.User.academy == academy))

    return condition


def _messages_of_academy(academy: str) -> ColumnElement[bool]:
    return m.ModelMessage.conversation_id.in_(
        select(m.ModelConversation.id).where(
            m.ModelConversation.user_id.in_(select(m.User.id).where(m.User.academy == academy))
        )
    )


_redeemer = m.User.__table__.alias("redeemer")
_owner = m.User.__table__.alias("owner")

SPECS: dict[str, BrowseSpec] = {
    "users": BrowseSpec(
        columns={
            "id": m.User.id,
            "username": m.User.username,
            "email": m.User.email,
            "academy": m.User.academy,
            "tokens": m.User.tokens,
            "pic_times": m.User.pic_times,
            "status": m.User.status,
            "created_at": m.User.created_at,
        },
        source=m.User,
        text=("username", "email"),
        academy=m.User.academy,
        date="created_at",
        numbers=("tokens", "pic_times"),
    ),
    "admins": BrowseSpec(
        columns={
            "id": m.Admin.id,
            "name": m.Admin.name,
            "is_super": m.Admin.is_super,
            "created_at": m.Admin.created_at,
        },
        source=m.Admin,
        text=("name",),
        date="created_at",
    ),
    "vouchers": BrowseSpec(
        columns={
            "id": m.Voucher.id,
            "name": m.Voucher.name,
            "tokens": m.Voucher.tokens,
            "pic_times": m.Voucher.pic_times,
            "academy": m.Voucher.academy,
            "available": m.Voucher.available,
            "expires_at": m.Voucher.expires_at,
            "max_redemptions": m.Voucher.max_redemptions,
            "redeemed_count": m.Voucher.redeemed_count,
            "created_by": m.Voucher.created_by,
            "created_at": m.Voucher.created_at,
        },
        source=m.Voucher,
        text=("name", "id", "created_by"),
        academy=m.Voucher.academy,
        date="created_at",
        numbers=("tokens", "pic_times", "redeemed_count"),
        default_sort="created_at",
    ),
    "redemptions": BrowseSpec(
        columns={
            "id": m.Redemption.id,
            "user_id": m.Redemption.user_id,
            "username": _redeemer.c.username,
            "academy": _redeemer.c.academy,
            "voucher_id": m.Redemption.voucher_id,
            "voucher": m.Voucher.name,
            "tokens": m.Voucher.tokens,
            "pic_times": m.Voucher.pic_times,
            "redeemed_at": m.Redemption.redeemed_at,
        },
        source=m.Redemption.__table__.outerjoin(_redeemer, _redeemer.c.id == m.Redemption.user_id).outerjoin(
            m.Voucher.__table__, m.Voucher.id == m.Redemption.voucher_id
        ),
        text=("username", "voucher", "voucher_id"),
        academy=_users_of_academy(m.Redemption.user_id),
        date="redeemed_at",
    ),
    "ledger": BrowseSpec(
        columns={
            "id": m.QuotaLedger.id,
            "user_id": m.QuotaLedger.user_id,
            "kind": m.QuotaLedger.kind,
            "delta_tokens": m.QuotaLedger.delta_tokens,
            "delta_pic_times": m.QuotaLedger.delta_pic_times,
            "model": m.QuotaLedger.model,
            "request_id": m.QuotaLedger.request_id,
            "prompt_tokens": m.QuotaLedger.prompt_tokens,
            "completion_tokens": m.QuotaLedger.completion_tokens,
            "actor": m.QuotaLedger.actor,
            "note": m.QuotaLedger.note,
            "created_at": m.QuotaLedger.created_at,
        },
        source=m.QuotaLedger,
        text=("user_id", "kind", "model", "request_id", "actor", "note"),
        academy=_users_of_academy(m.QuotaLedger.user_id),
        date="created_at",
        numbers=("delta_tokens", "delta_pic_times"),
    ),
    "usage": BrowseSpec(
        columns={
            "id": m.UsageRecord.id,
            "request_id": m.UsageRecord.request_id,
            "user_id": m.UsageRecord.user_id,
            "academy": m.UsageRecord.academy,
            "admin_name": m.UsageRecord.admin_name,
            "kind": m.UsageRecord.kind,
            "model": m.UsageRecord.model,
            "provider": m.UsageRecord.provider,
            "prompt_tokens": m.UsageRecord.prompt_tokens,
            "completion_tokens": m.UsageRecord.completion_tokens,
            "audio_seconds": m.UsageRecord.audio_seconds,
            "latency_ms": m.UsageRecord.latency_ms,
            "ttft_ms": m.UsageRecord.ttft_ms,
            "status": m.UsageRecord.status,
            "error": m.UsageRecord.error,
            "created_at": m.UsageRecord.created_at,
        },
        source=m.UsageRecord,
        text=("model", "user_id", "request_id", "provider", "status", "kind"),
        academy=m.UsageRecord.academy,
        date="created_at",
        numbers=("prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms"),
    ),
    "conversations": BrowseSpec(
        columns={
            "id": m.ModelConversation.id,
            "user_id": m.ModelConversation.user_id,
            "username": _owner.c.username,
            "title": m.ModelConversation.title,
            "model": m.ModelConversation.ai_name,
            "model_id": m.ModelConversation.model_id,
            "created_time": m.ModelConversation.created_time,
            "updated_time": m.ModelConversation.updated_time,
        },
        source=m.ModelConversation.__table__.outerjoin(_owner, _owner.c.id == m.ModelConversation.user_id),
        text=("title", "model", "username"),
        academy=_users_of_academy(m.ModelConversation.user_id),
        date="created_time",
    ),
    "messages": BrowseSpec(
        columns={
            "id": m.ModelMessage.id,
            "conversation_id": m.ModelMessage.conversation_id,
            "role": m.ModelMessage.role,
            "content": m.ModelMessage.content,
            "prompt_tokens": m.ModelMessage.prompt_tokens,
            "completion_tokens": m.ModelMessage.completion_tokens,
            "created_time": m.ModelMessage.created_time,
        },
        source=m.ModelMessage,
        text=("content", "role"),
        academy=_messages_of_academy,
        date="created_time",
        numbers=("prompt_tokens", "completion_tokens"),
    ),
    "models": BrowseSpec(
        columns={
            "model_id": m.ModelInfo.model_id,
            "model_name": m.ModelInfo.model_name,
            "model_version": m.ModelInfo.model_version,
            "base_model": m.ModelInfo.ai_name,
            "link_type": m.ModelInfo.link_type,
            "connection_id": m.ModelInfo.aiol_id,
            "disable": m.ModelInfo.disable,
            "is_default": m.ModelInfo.is_default,
            "description": m.ModelInfo.description,
            "user_id": m.ModelInfo.user_id,
            "created_by": m.ModelInfo.created_by,
            "created_time": m.ModelInfo.created_time,
        },
        source=m.ModelInfo,
        text=("model_name", "base_model", "description"),
        date="created_time",
        key="model_id",
    ),
    "connections": BrowseSpec(
        columns={
            "ai_id": m.ModelAiOnline.ai_id,
            "ai_name": m.ModelAiOnline.ai_name,
            "ai_api": m.ModelAiOnline.ai_api,
            "ai_type": m.ModelAiOnline.ai_type,
            "ai_version": m.ModelAiOnline.ai_version,
            "protocol": m.ModelAiOnline.protocol,
            "timeout": m.ModelAiOnline.timeout,
            "key_set": m.ModelAiOnline.ai_token_encrypted.is_not(None),
            "created_by": m.ModelAiOnline.created_by,
            "created_time": m.ModelAiOnline.created_time,
        },
        source=m.ModelAiOnline,
        text=("ai_name", "ai_api", "ai_version"),
        date="created_time",
        key="ai_id",
    ),
    "audit": BrowseSpec(
        columns={
            "id": m.AuditLog.id,
            "actor": m.AuditLog.actor,
            "action": m.AuditLog.action,
            "target_type": m.AuditLog.target_type,
            "target_id": m.AuditLog.target_id,
            "detail": m.AuditLog.detail,
            "created_at": m.AuditLog.created_at,
        },
        source=m.AuditLog,
        text=("actor", "action", "target_type", "target_id"),
        date="created_at",
    ),
}

TABLES = tuple(SPECS)


@dataclass(frozen=True)
class NumberRange:
    column: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class BrowseFilters:
    """What the user asked for; every part is optional. Dates are whole days (UTC), inclusive."""

    text: str | None = None
    academy: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    numbers: tuple[NumberRange, ...] = ()
    equals: dict[str, Any] = field(default_factory=dict)  # exact matches on public columns (e.g. user_id)


@dataclass(frozen=True)
class BrowsePage:
    columns: list[str]
    rows: list[dict[str, Any]]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def spec_for(table: str) -> BrowseSpec:
    """The spec of a whitelisted table; 404 TABLE_NOT_FOUND otherwise."""
    spec = SPECS.get(table)
    if spec is None:
        raise ServiceError("TABLE_NOT_FOUND", f"unknown table {table!r}; one of: {', '.join(SPECS)}", 404)
    return spec


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def conditions(spec: BrowseSpec, filters: BrowseFilters) -> list[ColumnElement[bool]]:
    """The WHERE conditions for `filters` on a table (unknown column names are refused)."""
    where: list[ColumnElement[bool]] = []
    text = (filters.text or "").strip()
    if text and spec.text:
        pattern = _like_pattern(text)
        where.append(or_(*(spec.columns[name].ilike(pattern, escape="\\") for name in spec.text)))
    academy = (filters.academy or "").strip()
    if academy and spec.academy is not None:
        where.append(spec.academy(academy) if callable(spec.academy) else spec.academy == academy)
    if spec.date is not None:
        column = spec.columns[spec.date]
        if filters.date_from is not None:
            where.append(column >= _day_start(filters.date_from))
        if filters.date_to is not None:
            where.append(column < _day_start(filters.date_to + timedelta(days=1)))
    for number in filters.numbers:
        if number.column not in spec.numbers:
            raise ServiceError("QUERY_ERROR", f"{number.column!r} takes no number range here", 422)
        column = spec.columns[number.column]
        if number.low is not None:
            where.append(column >= number.low)
        if number.high is not None:
            where.append(column <= number.high)
    for name, value in filters.equals.items():
        if name not in spec.columns:
            raise ServiceError("QUERY_ERROR", f"unknown column {name!r}", 422)
        where.append(spec.columns[name] == value)
    return where


def _ordered(spec: BrowseSpec, sort: str | None, descending: bool) -> Select:
    sort = sort or spec.default_sort or spec.key
    if sort not in spec.columns:
        raise ServiceError("QUERY_ERROR", f"cannot sort by {sort!r}", 422)
    stmt = select(*(col.label(name) for name, col in spec.columns.items())).select_from(spec.source)
    key = spec.columns[spec.key]
    order = [spec.columns[sort].desc() if descending else spec.columns[sort].asc()]
    if sort != spec.key:
        order.append(key.desc() if descending else key.asc())
    return stmt.order_by(*order)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return value


def count(session: Session, table: str, filters: BrowseFilters | None = None) -> int:
    """How many rows of `table` match `filters`. Usage rows filtered at most by academy and
    dates are counted from the daily roll-up (and today's rows), not row by row."""
    spec = spec_for(table)
    filters = filters or BrowseFilters()
    if table == "usage" and not (filters.text or "").strip() and not filters.numbers and not filters.equals:
        academy = (filters.academy or "").strip() or None
        return usage_rollup.count_usage(session, academy=academy, date_from=filters.date_from, date_to=filters.date_to)
    where = conditions(spec, filters)
    stmt = select(func.count()).select_from(spec.source)
    if where:
        stmt = stmt.where(and_(*where))
    return int(session.scalar(stmt) or 0)


def page(
    session: Session,
    table: str,
    filters: BrowseFilters | None = None,
    *,
    sort: str | None = None,
    descending: bool = True,
    page: int = 1,
    page_size: int = 50,
) -> BrowsePage:
    """One page of matching rows (1-based `page`), sorted in SQL, plus the total match count."""
    spec = spec_for(table)
    filters = filters or BrowseFilters()
    if not 1 <= page_size <= PAGE_SIZE_MAX:
        raise ServiceError("QUERY_ERROR", f"page size must be 1-{PAGE_SIZE_MAX}", 422)
    page = max(1, page)
    where = conditions(spec, filters)
    stmt = _ordered(spec, sort, descending)
    if where:
        stmt = stmt.where(and_(*where))
    rows = session.execute(stmt.offset((page - 1) * page_size).limit(page_size)).mappings().all()
    return BrowsePage(
        columns=list(spec.columns),
        rows=[{k: _plain(v) for k, v in row.items()} for row in rows],
        total=count(session, table, filters),
        page=page,
        page_size=page_size,
    )


def iter_rows(
    session: Session,
    table: str,
    filters: BrowseFilters | None = None,
    *,
    sort: str | None = None,
    descending: bool = True,
    limit: int = EXPORT_MAX_ROWS,
    chunk: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Every matching row (up to `limit`), fetched from the server in chunks."""
    spec = spec_for(table)
    where = conditions(spec, filters or BrowseFilters())
    stmt = _ordered(spec, sort, descending)
    if where:
        stmt = stmt.where(and_(*where))
    result = session.execute(stmt.limit(limit).execution_options(yield_per=chunk)).mappings()
    for row in result:
        yield {k: _plain(v) for k, v in row.items()}


def export_csv(
    session: Session,
    table: str,
    filters: BrowseFilters | None = None,
    *,
    sort: str | None = None,
    descending: bool = True,
    limit: int = EXPORT_MAX_ROWS,
) -> bytes:
    """The matching rows as UTF-8 CSV (with a BOM so spreadsheet programs read Chinese right)."""
    spec = spec_for(table)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(spec.columns))
    writer.writeheader()
    for row in iter_rows(session, table, filters, sort=sort, descending=descending, limit=limit):
        writer.writerow(row)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def academies(session: Session, limit: int = 500) -> list[str]:
    """The distinct academy names of users (for filter pickers), from the indexed column."""
    stmt = select(m.User.academy).where(m.User.academy.is_not(None)).group_by(m.User.academy).order_by(m.User.academy)
    return [a for a in session.scalars(stmt.limit(limit)) if a]
