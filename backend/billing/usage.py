"""Usage records: one row per inference request, whatever its outcome.

The gateway writes a row for every chat (ok, error or cancelled) with the caller, the
model and provider, the token counts, the latency and the time to the first token. Admin
console tests carry `admin_name` and no user: they are charged to nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from db.models import UsageRecord

STATUSES = ("ok", "error", "cancelled")
_NEW_ROW = insert(UsageRecord.metadata.tables[UsageRecord.__tablename__])  # built once: every chat writes one
ERROR_MAX = 255


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def record(
    session: Session,
    *,
    request_id: str | None,
    user_id: str | None,
    academy: str | None,
    admin_name: str | None,
    model: str | None,
    provider: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: int | None,
    ttft_ms: int | None,
    status: str,
    error: str | None = None,
    kind: str = "chat",
    connection_id: int | None = None,
) -> None:
    """Add one usage row in the caller's transaction (one INSERT into the table: every chat
    writes one). `error` must already be free of secrets."""
    if status not in STATUSES:
        raise ValueError(f"unknown usage status {status!r}")
    if error and len(error) > ERROR_MAX:
        error = error[: ERROR_MAX - 1] + "…"
    session.execute(
        _NEW_ROW,
        dict(
            request_id=request_id,
            user_id=user_id,
            academy=academy,
            admin_name=admin_name,
            kind=kind,
            model=model,
            provider=provider,
            prompt_tokens=max(int(prompt_tokens), 0),
            completion_tokens=max(int(completion_tokens), 0),
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            status=status,
            error=error,
            connection_id=connection_id,
        ),
    )


def for_request(session: Session, request_id: str) -> list[UsageRecord]:
    """The usage rows of one request id (normally exactly one)."""
    return list(session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)))


def recent(session: Session, *, user_id: str | None = None, limit: int = 50) -> list[UsageRecord]:
    """The latest usage rows, newest first, optionally of one user."""
    stmt = select(UsageRecord).order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc()).limit(limit)
    if user_id is not None:
        stmt = stmt.where(UsageRecord.user_id == user_id)
    return list(session.scalars(stmt))


def totals(
    session: Session,
    *,
    user_id: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    status: str | None = "ok",
) -> UsageTotals:
    """How many requests and tokens, filtered by user, model, time and status."""
    stmt = select(
        func.count(UsageRecord.id),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
    )
    if user_id is not None:
        stmt = stmt.where(UsageRecord.user_id == user_id)
    if model is not None:
        stmt = stmt.where(UsageRecord.model == model)
    if since is not None:
        stmt = stmt.where(UsageRecord.created_at >= since)
    if status is not None:
        stmt = stmt.where(UsageRecord.status == status)
    count, prompt, completion = session.execute(stmt).one()
    return UsageTotals(int(count), int(prompt), int(completion))
