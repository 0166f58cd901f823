"""Vouchers (the seed's "tokens", 令牌): academy-scoped redeem codes granting tokens and picTimes.

A voucher may be redeemed once per user, by any number of users of its academy, while it
is available, not expired and under its optional redemption cap. Redemption is made
exactly-once by the unique (user, voucher) pair plus a conditional counter update.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import audit
from backend.billing import quota
from backend.errors import ServiceError, conflict
from backend.names import check_name
from db.models import Redemption, User, Voucher
from db.session import rowcount


def new_code() -> str:
    return secrets.token_hex(16)


def get_by_name(session: Session, name: str) -> Voucher | None:
    return session.scalar(select(Voucher).where(Voucher.name == name))


def require_by_name(session: Session, name: str) -> Voucher:
    voucher = get_by_name(session, name)
    if voucher is None:
        raise ServiceError("TOKEN_NOT_FOUND", f"voucher {name!r} not found", 404)
    return voucher


def create_voucher(
    session: Session,
    *,
    name: str,
    tokens: int,
    pic_times: int,
    academy: str | None,
    actor: str,
    expires_at: datetime | None = None,
    max_redemptions: int | None = None,
    available: bool = True,
) -> Voucher:
    """Create one voucher; its id is a fresh random redeem code."""
    name = check_name(name, "ADD_TOKEN_ERROR", "voucher name")
    if tokens < 0 or pic_times < 0:
        raise ServiceError("ADD_TOKEN_ERROR", "tokens and pictimes cannot be negative", 422)
    if max_redemptions is not None and max_redemptions < 1:
        raise ServiceError("ADD_TOKEN_ERROR", "max redemptions must be at least 1", 422)
    if get_by_name(session, name) is not None:
        raise conflict("TOKEN_REPEAT", f"voucher name {name!r} already exists")
    voucher = Voucher(
        id=new_code(),
        name=name,
        tokens=tokens,
        pic_times=pic_times,
        academy=(academy or "").strip() or None,
        expires_at=expires_at,
        max_redemptions=max_redemptions,
        available=available,
        created_by=actor,
    )
    session.add(voucher)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="add_voucher",
        target_type="voucher",
        target_id=voucher.id,
        detail={"name": name, "tokens": tokens, "pic_times": pic_times, "academy": voucher.academy},
    )
    return voucher


def create_batch(
    session: Session,
    *,
    prefix: str,
    count: int,
    tokens: int,
    pic_times: int,
    academy: str | None,
    actor: str,
    expires_at: datetime | None = None,
    max_redemptions: int | None = None,
) -> list[Voucher]:
    """Create `count` vouchers named `prefix-001`, `prefix-002`, ... in one transaction."""
    if not 1 <= count <= 1000:
        raise ServiceError("ADD_TOKEN_ERROR", "a batch holds 1 to 1000 vouchers", 422)
    width = max(3, len(str(count)))
    return [
        create_voucher(
            session,
            name=f"{prefix}-{i:0{width}d}",
            tokens=tokens,
            pic_times=pic_times,
            academy=academy,
            actor=actor,
            expires_at=expires_at,
            max_redemptions=max_redemptions,
        )
        for i in range(1, count + 1)
    ]


def modify_voucher(
    session: Session,
    *,
    name: str,
    actor: str,
    tokens: int | None = None,
    pic_times: int | None = None,
    academy: str | None = None,
    available: bool | None = None,
    expires_at: datetime | None = None,
    max_redemptions: int | None = None,
) -> Voucher:
    voucher = require_by_name(session, name)
    changes: dict[str, object] = {}
    for field, value in (("tokens", tokens), ("pic_times", pic_times), ("max_redemptions", max_redemptions)):
        if value is not None:
            if value < 0:
                raise ServiceError("MODIFY_TOKEN_ERROR", f"{field} cannot be negative", 422)
            changes[field] = (getattr(voucher, field), value)
            setattr(voucher, field, value)
    if academy is not None:
        changes["academy"] = (voucher.academy, academy.strip() or None)
        voucher.academy = academy.strip() or None
    if available is not None:
        changes["available"] = (voucher.available, available)
        voucher.available = available
    if expires_at is not None:
        changes["expires_at"] = (voucher.expires_at, expires_at)
        voucher.expires_at = expires_at
    audit.record(
        session, actor=actor, action="modify_voucher", target_type="voucher", target_id=voucher.id, detail=changes
    )
    return voucher


def set_available(session: Session, *, name: str, available: bool, actor: str) -> Voucher:
    voucher = require_by_name(session, name)
    voucher.available = available
    audit.record(
        session,
        actor=actor,
        action="enable_voucher" if available else "disable_voucher",
        target_type="voucher",
        target_id=voucher.id,
        detail={"name": name},
    )
    return voucher


def delete_voucher(session: Session, *, name: str, actor: str) -> None:
    voucher = require_by_name(session, name)
    audit.record(
        session,
        actor=actor,
        action="delete_voucher",
        target_type="voucher",
        target_id=voucher.id,
        detail={"name": name},
    )
    session.delete(voucher)


def redeem(session: Session, *, voucher_id: str, user_id: str, user_academy: str | None) -> Voucher:
    """Redeem a voucher for a user: exactly once per (user, voucher), even under concurrency.
    Raises TOKEN_NOT_FOUND, TOKEN_NOT_AVAILABLE, PERMISSION_NOT_ALLOW, TOKEN_ALREADY_GET."""
    voucher = session.get(Voucher, voucher_id)
    if voucher is None:
        raise ServiceError("TOKEN_NOT_FOUND", "no voucher has this code", 404)
    # Lock the user first: the redemption's FK check share-locks the user row, and two
    # redemptions upgrading that share lock to grant the quota would deadlock on InnoDB.
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise ServiceError("USER_NOT_FOUND", "user not found", 404)
    now = datetime.now(UTC)
    if not voucher.available or (voucher.expires_at is not None and voucher.expires_at <= now):
        raise ServiceError("TOKEN_NOT_AVAILABLE", "this voucher is disabled or expired", 409)
    academy = (user_academy if user_academy is not None else user.academy) or None
    if voucher.academy != academy or user.academy != voucher.academy:
        raise ServiceError("PERMISSION_NOT_ALLOW", "this voucher belongs to another academy", 403)
    try:
        with session.begin_nested():
            session.add(Redemption(user_id=user_id, voucher_id=voucher_id))
            session.flush()
    except IntegrityError:
        raise ServiceError("TOKEN_ALREADY_GET", "this user has already redeemed this voucher", 409) from None
    counted = rowcount(
        session.execute(
            update(Voucher)
            .where(
                Voucher.id == voucher_id,
                (Voucher.max_redemptions.is_(None)) | (Voucher.redeemed_count < Voucher.max_redemptions),
            )
            .values(redeemed_count=Voucher.redeemed_count + 1)
            .execution_options(synchronize_session=False)
        )
    )
    if counted != 1:
        raise ServiceError("TOKEN_NOT_AVAILABLE", "this voucher has been used up", 409)
    quota.grant(
        session,
        user_id=user_id,
        tokens=voucher.tokens,
        pic_times=voucher.pic_times,
        kind="redeem",
        note=f"voucher {voucher.name}",
    )
    return voucher
