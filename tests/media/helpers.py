"""What the media tests share: connection rows pointing at the local engine servers, and
what a media request may change for a user (a snapshot, the usage rows, the books)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from backend import security
from backend.billing import quota
from backend.config import Settings
from db.models import ModelAiOnline, QuotaLedger, QuotaReservation, UsageRecord


def add_connection(
    maker: sessionmaker,
    settings: Settings,
    *,
    name: str,
    protocol: str,
    url: str,
    secret: str | None,
    version: str | None = None,
    timeout: int = 10,
) -> None:
    """A `model_ai_online` row as an admin would configure it (secret encrypted)."""
    with maker.begin() as s:
        s.add(
            ModelAiOnline(
                ai_name=name,
                ai_api=url,
                ai_token_encrypted=security.encrypt_secret(settings, secret),
                ai_version=version,
                ai_type=3 if protocol in ("iflytek-ocr", "openai-vision") else 1,
                protocol=protocol,
                timeout=timeout,
            )
        )


@dataclass(frozen=True)
class Snapshot:
    tokens: int
    pic_times: int
    ledger_rows: int
    usage_rows: int
    reservations: int


def snapshot(maker: sessionmaker, user_id: str) -> Snapshot:
    """Everything a media request may change for a user."""
    with maker() as s:
        bal = quota.balance(s, user_id)
        count = lambda model: s.scalar(select(func.count()).select_from(model).where(model.user_id == user_id))  # noqa: E731
        return Snapshot(bal.tokens, bal.pic_times, count(QuotaLedger), count(UsageRecord), count(QuotaReservation))


def usage_rows(maker: sessionmaker, user_id: str) -> list[UsageRecord]:
    with maker() as s:
        rows = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user_id).order_by(UsageRecord.id)).all()
        for row in rows:
            s.expunge(row)
        return list(rows)


def assert_books_balance(maker: sessionmaker, user_id: str) -> None:
    """Balance == ledger sum, nothing negative, no reservation left open."""
    with maker() as s:
        bal, ledger = quota.balance(s, user_id), quota.ledger_sum(s, user_id)
        open_reservations = s.scalar(
            select(func.count())
            .select_from(QuotaReservation)
            .where(QuotaReservation.user_id == user_id, QuotaReservation.status == "active")
        )
    assert bal == ledger and bal.tokens >= 0 and bal.pic_times >= 0 and open_reservations == 0
