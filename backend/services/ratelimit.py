"""Login brute-force limits, kept in the database so every process shares them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import ServiceError
from db.models import LoginAttempt


def login_subjects(kind: str, name: str, address: str | None) -> tuple[str, str | None]:
    """The account key and the address key a login attempt counts against."""
    return f"{kind}:{name[:128]}", (f"addr:{address}" if address else None)


def check_login_allowed(session: Session, settings: Settings, account: str, address: str | None) -> None:
    """Raise 429 when the account or the address has failed too often in the window."""
    since = datetime.now(UTC) - timedelta(seconds=settings.login_window_seconds)
    limits = [(account, settings.login_max_failures_per_account)]
    if address:
        limits.append((address, settings.login_max_failures_per_address))
    for subject, limit in limits:
        failures = session.scalar(
            select(func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.subject == subject, LoginAttempt.at >= since)
        )
        if failures >= limit:
            who = "this account" if subject == account else "this address"
            raise ServiceError(
                "LOGIN_ERROR",
                f"too many failed logins for {who}; try again in {settings.login_window_seconds // 60} minutes",
                429,
            )


def record_failure(session: Session, account: str, address: str | None) -> None:
    session.add(LoginAttempt(subject=account))
    if address:
        session.add(LoginAttempt(subject=address))


def clear_account(session: Session, account: str) -> None:
    """A successful login forgives the account's earlier failures (not the address's)."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.subject == account))
