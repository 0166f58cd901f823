"""The quota service: every change of a user's tokens or picTimes goes through here.

Each operation is one atomic conditional UPDATE (`... WHERE tokens >= :n`) plus its
ledger row, in the caller's transaction; so a balance always equals the sum of its
ledger and can never go below zero, whatever the concurrency and on every database.

Requests that call a model `reserve` their maximum first, then `settle` to the real
usage (the rest flows back) or `release` everything on failure. A crashed process's
reservations are released by `sweep_expired` once their `expires_at` has passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from backend.billing import pricing
from backend.errors import ServiceError
from db.models import QuotaLedger, QuotaReservation, User, new_hex_id
from db.session import rowcount

# Every chat runs these statements twice (reserve, settle): they are built once, on the
# tables (Core), and run with parameters — not rebuilt per call nor sent through the ORM's
# unit of work, which profiled at a tenth of the gateway's CPU.
_users, _ledger_rows, _reservations = (
    User.metadata.tables[m.__tablename__] for m in (User, QuotaLedger, QuotaReservation)
)
_u, _r = _users.c, _reservations.c
_CREDIT = (
    update(_users)
    .where(_u.id == bindparam("user_id"))
    .values(tokens=_u.tokens + bindparam("n_tokens"), pic_times=_u.pic_times + bindparam("n_pic_times"))
)
_DEBIT = (
    update(_users)
    .where(_u.id == bindparam("user_id"), _u.tokens >= bindparam("n_tokens"), _u.pic_times >= bindparam("n_pic_times"))
    .values(tokens=_u.tokens - bindparam("n_tokens"), pic_times=_u.pic_times - bindparam("n_pic_times"))
)
_CLOSE = (
    update(_reservations)
    .where(_r.id == bindparam("reservation_id"), _r.status == "active")
    .values(status=bindparam("new_status"))
)
_CLOSE_RETURNING = _CLOSE.returning(*_reservations.c)
_READ = select(_reservations).where(_r.id == bindparam("reservation_id"))
_NEW_LEDGER_ROW, _NEW_RESERVATION = insert(_ledger_rows), insert(_reservations)


@dataclass(frozen=True)
class Balance:
    tokens: int
    pic_times: int


def _ledger(session: Session, user_id: str, kind: str, tokens: int, pic_times: int, **fields: object) -> None:
    row = {"user_id": user_id, "kind": kind, "delta_tokens": tokens, "delta_pic_times": pic_times, **fields}
    session.execute(_NEW_LEDGER_ROW, row)


def _require_user(session: Session, user_id: str) -> None:
    if session.scalar(select(User.id).where(User.id == user_id)) is None:
        raise ServiceError("USER_NOT_FOUND", f"user {user_id} not found", 404)


def _credit(session: Session, user_id: str, tokens: int, pic_times: int) -> None:
    """Add non-negative amounts to a balance (refunds, grants)."""
    result = session.execute(_CREDIT, {"user_id": user_id, "n_tokens": tokens, "n_pic_times": pic_times})
    if rowcount(result) != 1:
        raise ServiceError("USER_NOT_FOUND", f"user {user_id} not found", 404)


def _debit(session: Session, user_id: str, tokens: int, pic_times: int) -> bool:
    """Take amounts from a balance only if it covers them; False when it does not."""
    result = session.execute(_DEBIT, {"user_id": user_id, "n_tokens": tokens, "n_pic_times": pic_times})
    return rowcount(result) == 1


def balance(session: Session, user_id: str, *, for_update: bool = False) -> Balance:
    """The user's current balance (`for_update` locks the row until the transaction ends)."""
    stmt = select(User.tokens, User.pic_times).where(User.id == user_id)
    row = session.execute(stmt.with_for_update() if for_update else stmt).one_or_none()
    if row is None:
        raise ServiceError("USER_NOT_FOUND", f"user {user_id} not found", 404)
    return Balance(int(row.tokens), int(row.pic_times))


def ledger_sum(session: Session, user_id: str) -> Balance:
    """The sum of the user's ledger: always equal to `balance`."""
    row = session.execute(
        select(
            func.coalesce(func.sum(QuotaLedger.delta_tokens), 0),
            func.coalesce(func.sum(QuotaLedger.delta_pic_times), 0),
        ).where(QuotaLedger.user_id == user_id)
    ).one()
    return Balance(int(row[0]), int(row[1]))


def grant(
    session: Session,
    *,
    user_id: str,
    tokens: int = 0,
    pic_times: int = 0,
    actor: str | None = None,
    note: str | None = None,
    kind: str = "grant",
) -> None:
    """Give a user tokens and/or picTimes (never negative)."""
    if tokens < 0 or pic_times < 0:
        raise ServiceError("MODIFY_USER_ERROR", "a grant cannot be negative; use adjust", 422)
    _credit(session, user_id, tokens, pic_times)
    _ledger(session, user_id, kind, tokens, pic_times, actor=actor, note=note)


def adjust(
    session: Session,
    *,
    user_id: str,
    tokens: int = 0,
    pic_times: int = 0,
    actor: str | None = None,
    note: str | None = None,
) -> None:
    """Add (positive) or remove (negative) amounts; a removal beyond the balance is refused."""
    _require_user(session, user_id)
    ok = rowcount(
        session.execute(
            update(User)
            .where(User.id == user_id, User.tokens + tokens >= 0, User.pic_times + pic_times >= 0)
            .values(tokens=User.tokens + tokens, pic_times=User.pic_times + pic_times)
            .execution_options(synchronize_session=False)
        )
    )
    if ok != 1:
        raise ServiceError("MODIFY_USER_ERROR", "the adjustment would make the balance negative", 409)
    _ledger(session, user_id, "admin_adjust", tokens, pic_times, actor=actor, note=note)


def set_balance(
    session: Session,
    *,
    user_id: str,
    tokens: int | None = None,
    pic_times: int | None = None,
    actor: str | None = None,
    note: str | None = None,
) -> Balance:
    """Set absolute balances (the seed's modify_normal_user) as a compare-and-set plus the
    matching `admin_adjust` ledger row. The row is read FOR UPDATE (a REPEATABLE READ
    snapshot would otherwise never see the concurrent change); the CAS guards the rest."""
    for _ in range(20):
        current = balance(session, user_id, for_update=True)
        target = Balance(
            current.tokens if tokens is None else tokens, current.pic_times if pic_times is None else pic_times
        )
        if target.tokens < 0 or target.pic_times < 0:
            raise ServiceError("MODIFY_USER_ERROR", "tokens and picTimes cannot be negative", 422)
        if target == current:
            return current
        swapped = rowcount(
            session.execute(
                update(User)
                .where(User.id == user_id, User.tokens == current.tokens, User.pic_times == current.pic_times)
                .values(tokens=target.tokens, pic_times=target.pic_times)
                .execution_options(synchronize_session=False)
            )
        )
        if swapped == 1:
            _ledger(
                session,
                user_id,
                "admin_adjust",
                target.tokens - current.tokens,
                target.pic_times - current.pic_times,
                actor=actor,
                note=note,
            )
            return target
    raise ServiceError("MODIFY_USER_ERROR", "the balance kept changing; try again", 409)


def reserve(
    session: Session,
    *,
    user_id: str,
    tokens: int = 0,
    pic_times: int = 0,
    ttl: timedelta = timedelta(minutes=10),
    request_id: str | None = None,
    model: str | None = None,
    price: pricing.Price | None = None,
) -> str:
    """Hold the most a request can cost; raises TOKEN_NOT_ENOUGH / PIC_TIMES_NOT_ENOUGH (402).
    With a `price` (a chat), the settlement charges the real usage at this price."""
    if tokens < 0 or pic_times < 0:
        raise ServiceError("APP_INTERNAL_ERROR", "a reservation cannot be negative", 500)
    if not _debit(session, user_id, tokens, pic_times):
        current = balance(session, user_id)  # raises USER_NOT_FOUND for an unknown user
        # Judge by what was asked: a concurrent refund may have topped the balance up since.
        if pic_times == 0 or (tokens > 0 and current.tokens < tokens):
            raise ServiceError(
                "TOKEN_NOT_ENOUGH", f"not enough tokens: {current.tokens} left, this request needs up to {tokens}", 402
            )
        raise ServiceError(
            "PIC_TIMES_NOT_ENOUGH", f"not enough picTimes: {current.pic_times} left, {pic_times} needed", 402
        )
    reservation_id = new_hex_id()
    prices = {
        "prompt_price": None if price is None else price.prompt,
        "completion_price": None if price is None else price.completion,
    }
    session.execute(
        _NEW_RESERVATION,
        {
            "id": reservation_id,
            "user_id": user_id,
            "tokens": tokens,
            "pic_times": pic_times,
            "request_id": request_id,
            "model": model,
            "expires_at": datetime.now(UTC) + ttl,
            **prices,
        },
    )
    _ledger(
        session,
        user_id,
        "reserve",
        -tokens,
        -pic_times,
        reservation_id=reservation_id,
        request_id=request_id,
        model=model,
        **prices,
    )
    return reservation_id


def _close(session: Session, reservation_id: str, status: str) -> Any:
    """Move an active reservation to `status` and return its row; None when it was already
    closed (idempotent). One statement where the database has UPDATE … RETURNING (SQLite,
    PostgreSQL), an UPDATE and a read on MariaDB."""
    params = {"reservation_id": reservation_id, "new_status": status}
    if session.get_bind().dialect.update_returning:
        return session.execute(_CLOSE_RETURNING, params).one_or_none()
    if rowcount(session.execute(_CLOSE, params)) != 1:
        return None
    return session.execute(_READ, params).one()


def settle(
    session: Session,
    *,
    reservation_id: str,
    tokens: int = 0,
    pic_times: int = 0,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    connection_id: int | None = None,
) -> Balance | None:
    """Charge the real usage (capped at what was reserved) and give back the rest.
    Returns the amounts charged, or None if the reservation was already closed.
    `connection_id`: the connection that served a chat, kept on the ledger row.

    A reservation made with a price (a chat) charges `prompt_tokens` and `completion_tokens`
    at the prices captured when it was made (`tokens` is then not used); the ledger row keeps
    the raw tokens and those prices."""
    res = _close(session, reservation_id, "settled")
    if res is None:
        return None
    if res.prompt_price is not None and res.completion_price is not None:
        captured = pricing.Price(res.prompt_price, res.completion_price)
        tokens = pricing.charge(captured, pricing.Tokens(prompt_tokens or 0, completion_tokens or 0))
    charged = Balance(min(max(tokens, 0), res.tokens), min(max(pic_times, 0), res.pic_times))
    refund_t, refund_p = res.tokens - charged.tokens, res.pic_times - charged.pic_times
    if refund_t or refund_p:
        _credit(session, res.user_id, refund_t, refund_p)
    _ledger(
        session,
        res.user_id,
        "settle",
        refund_t,
        refund_p,
        reservation_id=res.id,
        request_id=res.request_id,
        model=res.model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        prompt_price=res.prompt_price,
        completion_price=res.completion_price,
        connection_id=connection_id,
    )
    return charged


def release(session: Session, *, reservation_id: str, note: str | None = None) -> bool:
    """Give the whole reservation back; False if it was already closed."""
    res = _close(session, reservation_id, "released")
    if res is None:
        return False
    _credit(session, res.user_id, res.tokens, res.pic_times)
    _ledger(
        session,
        res.user_id,
        "release",
        res.tokens,
        res.pic_times,
        reservation_id=res.id,
        request_id=res.request_id,
        model=res.model,
        note=note,
    )
    return True


def sweep_expired(session: Session, *, now: datetime | None = None, limit: int = 500) -> int:
    """Release reservations whose holder died; returns how many were released."""
    now = now or datetime.now(UTC)
    ids = session.scalars(
        select(QuotaReservation.id)
        .where(QuotaReservation.status == "active", QuotaReservation.expires_at < now)
        .limit(limit)
    ).all()
    return sum(release(session, reservation_id=rid, note="expired") for rid in ids)
