"""Login admission: how many password checks an account and an address may have, kept in
the database (`login_limits`) so every process shares them.

Counters. A login attempt is admitted to a real password check only if it fits, by one
atomic conditional UPDATE each (`count = count + 1 WHERE count < limit`, or a fresh window
once the old one is over), every counter it is charged to:
- `pair:<kind>:<name>|<address>` — this account from this address: the tight limit
  (`login_max_failures_per_account_address`, 5 per 15 minutes);
- `acct:<kind>:<name>` — this account from anywhere: a looser limit
  (`login_max_failures_per_account`, 20), so guesses spread over many addresses stop;
- `addr:<address>` — failures from this address against any account
  (`login_max_failures_per_address`, 20), so one address cannot spray many names. It counts
  failures after their check (read before admitting), not attempts in flight: 30 people
  signing in at once behind one NAT address must not refuse each other.
An address that has signed in to the account before (a `known:` row, kept
`login_known_address_days`) is charged only to its pair: guesses from elsewhere never lock
the right password out from where it is normally used, while guesses from that address
still stop at the pair's limit. Pair and account count every attempt before its check (in
flight included), so 30 parallel guesses get at most the limit of real checks; a successful
check gives its charge back (the pair starts over, the account counter loses the one
attempt), so the counters hold failures.

Retries. A failed name + password is remembered for `login_retry_seconds` (a keyed HMAC,
never the password): the same pair failing again at once (the AiProject desktop client
retries any non-200 login) is answered 401 without a second check or a second charge.

Dashboard sign-ins keep their own per-account count in `login_attempts` (Streamlit shows no
client address); they also charge the API's per-account counter.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Insert, case, delete, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import ServiceError
from db.models import LoginAttempt, LoginLimit
from db.session import rowcount

MAX_NAME = 128
MAX_ADDRESS = 60


@dataclass(frozen=True)
class LoginKeys:
    kind: str
    name: str
    address: str | None
    pair: str
    account: str
    by_address: str | None
    known: str


def login_keys(kind: str, name: str, address: str | None) -> LoginKeys:
    name = name[:MAX_NAME]
    address = address[:MAX_ADDRESS] if address else None
    where = address or "-"
    return LoginKeys(
        kind=kind,
        name=name,
        address=address,
        pair=f"pair:{kind}:{name}|{where}",
        account=f"acct:{kind}:{name}",
        by_address=f"addr:{address}" if address else None,
        known=f"known:{kind}:{name}|{where}",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _ensure(session: Session, subjects: list[str], now: datetime) -> None:
    """Create the counter rows that do not exist yet (count 0), never touching existing ones."""
    dialect = session.get_bind().dialect.name
    rows = [{"subject": s, "window_start": now, "count": 0} for s in subjects]
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(LoginLimit).on_conflict_do_nothing(index_elements=["subject"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(LoginLimit).on_conflict_do_nothing(index_elements=["subject"])
    else:
        stmt = mysql.insert(LoginLimit).prefix_with("IGNORE")
    session.execute(stmt, rows)


def _admit(session: Session, subject: str, limit: int, now: datetime, since: datetime) -> bool:
    """Charge one attempt to `subject` if its window has room (or is over: a new window
    starts); True when charged. One conditional UPDATE, so concurrent attempts never both
    take the last slot."""
    expired = LoginLimit.window_start < since
    stmt = (
        update(LoginLimit)
        .where(LoginLimit.subject == subject, or_(expired, LoginLimit.count < limit))
        # count first: MySQL evaluates SET left to right, and count reads the old window_start
        .ordered_values(
            (LoginLimit.count, case((expired, 1), else_=LoginLimit.count + 1)),
            (LoginLimit.window_start, case((expired, now), else_=LoginLimit.window_start)),
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(session.execute(stmt)) == 1


def is_known(session: Session, settings: Settings, keys: LoginKeys) -> bool:
    """Whether this address has signed in to this account recently."""
    since = _now() - timedelta(days=settings.login_known_address_days)
    return (
        session.scalar(
            select(LoginLimit.subject).where(LoginLimit.subject == keys.known, LoginLimit.window_start >= since)
        )
        is not None
    )


def _fingerprint(settings: Settings, keys: LoginKeys, password: str) -> str:
    message = "\0".join((keys.kind, keys.name, keys.address or "", password)).encode()
    return "retry:" + hmac.new(settings.secret("jwt_secret").encode(), message, hashlib.sha256).hexdigest()


def is_retry(session: Session, settings: Settings, keys: LoginKeys, password: str) -> bool:
    """Whether exactly this name + password failed from this address a moment ago."""
    since = _now() - timedelta(seconds=settings.login_retry_seconds)
    subject = _fingerprint(settings, keys, password)
    return (
        session.scalar(
            select(LoginLimit.subject).where(LoginLimit.subject == subject, LoginLimit.window_start >= since)
        )
        is not None
    )


def _too_many(what: str, settings: Settings) -> ServiceError:
    minutes = max(1, settings.login_window_seconds // 60)
    return ServiceError("LOGIN_ERROR", f"too many failed logins for {what}; try again in {minutes} minutes", 429)


def _limits(settings: Settings, keys: LoginKeys, known: bool) -> list[tuple[str, int, str]]:
    """The counters a check is charged to before it runs (atomically)."""
    limits = [(keys.pair, settings.login_max_failures_per_account_address, "this account from this address")]
    if not known:
        limits.append((keys.account, settings.login_max_failures_per_account, "this account"))
    return limits


def prepare(session: Session, settings: Settings, keys: LoginKeys, *, known: bool) -> None:
    """Create the counter rows an attempt will be charged to. The caller commits this on its
    own before `admit`, so the charging UPDATEs never wait on a lock an INSERT took (two
    MySQL transactions that both met an existing key would deadlock)."""
    subjects = [s for s, _, _ in _limits(settings, keys, known)]
    if keys.by_address and not known:
        subjects.append(keys.by_address)
    _ensure(session, subjects, _now())


def admit(session: Session, settings: Settings, keys: LoginKeys, *, known: bool) -> None:
    """Charge one password check to the pair and (from an unknown address) the account
    counter, or raise 429 (the caller then rolls back, so no counter keeps a charge for a
    refused attempt). The address counter only counts failures (charged in `failed`): many
    people signing in at once behind one NAT address are in flight together, and counting
    them would refuse a classroom; each of their checks is still bounded by its own pair
    and account counters."""
    now = _now()
    since = now - timedelta(seconds=settings.login_window_seconds)
    if keys.by_address and not known:
        row = session.execute(
            select(LoginLimit.count, LoginLimit.window_start).where(LoginLimit.subject == keys.by_address)
        ).first()
        if row is not None:
            count, window_start = row  # (`row.count` is typed as the tuple method)
            if window_start >= since and count >= settings.login_max_failures_per_address:
                raise _too_many("this address", settings)
    for subject, limit, what in _limits(settings, keys, known):  # always in this order: no lock cycles
        if not _admit(session, subject, limit, now, since):
            raise _too_many(what, settings)


def failed(session: Session, settings: Settings, keys: LoginKeys, password: str, *, known: bool) -> None:
    """A real check failed: its charges stay, the address counts one more failure (unless
    it is known to the account), and the name + password is remembered for retries."""
    now = _now()
    subject = _fingerprint(settings, keys, password)
    _ensure(session, [subject], now)
    session.execute(
        update(LoginLimit)
        .where(LoginLimit.subject == subject)
        .values(window_start=now)
        .execution_options(synchronize_session=False)
    )
    if keys.by_address and not known:
        since = now - timedelta(seconds=settings.login_window_seconds)
        expired = LoginLimit.window_start < since
        session.execute(
            update(LoginLimit)
            .where(LoginLimit.subject == keys.by_address)
            .ordered_values(
                (LoginLimit.count, case((expired, 1), else_=LoginLimit.count + 1)),
                (LoginLimit.window_start, case((expired, now), else_=LoginLimit.window_start)),
            )
            .execution_options(synchronize_session=False)
        )


def succeeded(session: Session, keys: LoginKeys, *, known: bool) -> None:
    """A real check passed: the pair starts over, the account counter gives this attempt
    back, and the address is known to the account from now on."""
    now = _now()
    _ensure(session, [keys.known], now)
    session.execute(
        update(LoginLimit)
        .where(LoginLimit.subject == keys.pair)
        .values(count=0)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(LoginLimit)
        .where(LoginLimit.subject == keys.known)
        .values(window_start=now)
        .execution_options(synchronize_session=False)
    )
    if not known:
        session.execute(
            update(LoginLimit)
            .where(LoginLimit.subject == keys.account, LoginLimit.count > 0)
            .values(count=LoginLimit.count - 1)
            .execution_options(synchronize_session=False)
        )


def charge_account(session: Session, kind: str, name: str) -> None:
    """A failed dashboard sign-in also counts against the API's per-account counter (not
    limited here: the dashboard's authenticator enforces its own count)."""
    keys = login_keys(kind, name, None)
    _ensure(session, [keys.account], _now())
    session.execute(
        update(LoginLimit)
        .where(LoginLimit.subject == keys.account)
        .values(count=LoginLimit.count + 1)
        .execution_options(synchronize_session=False)
    )


def sweep(session: Session, settings: Settings) -> int:
    """Delete counters whose window is over, retry marks older than a minute and addresses
    not seen for `login_known_address_days`."""
    now = _now()
    window_over = now - timedelta(seconds=max(settings.login_window_seconds, 60))
    known_over = now - timedelta(days=settings.login_known_address_days)
    result = session.execute(
        delete(LoginLimit)
        .where(
            or_(
                LoginLimit.window_start < known_over,
                (LoginLimit.window_start < window_over) & ~LoginLimit.subject.startswith("known:"),
            )
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) or 0


# --- the dashboard's own per-account count (login_attempts) ---------------------------------


def login_subjects(kind: str, name: str, address: str | None) -> tuple[str, str | None]:
    """The dashboard's account key (`user:alice`) in login_attempts."""
    return f"{kind}:{name[:MAX_NAME]}", (f"addr:{address}" if address else None)


def record_failure(session: Session, account: str, address: str | None) -> None:
    session.add(LoginAttempt(subject=account))
    if address:
        session.add(LoginAttempt(subject=address))


def clear_account(session: Session, account: str) -> None:
    """A successful dashboard sign-in forgives the account's earlier dashboard failures."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.subject == account))
