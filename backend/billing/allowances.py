"""Academy allowances on a schedule: every user of an academy (or of all academies) gets an
amount of tokens and picTimes once per period — weekly (Monday 00:00 UTC), monthly (the 1st,
00:00 UTC) or per term (explicit first and last days, UTC).

Mode `top_up` raises a balance to the amount (never lowers it), `add` adds the amount. An
optional carry cap first trims what is left from before to the cap (the excess is
forfeited, as a negative part of the same ledger row).

Exactly once per user and period, whichever process gets there first:
- a grant row per (allowance, period, user) under a unique constraint is the proof;
- a run applies users in chunks, each chunk ONE transaction that locks the chunk's user rows
  (in id order), inserts the grant rows set-based (INSERT … SELECT over users, skipping users
  that already have one), adds each grant's recorded delta to its balance in one UPDATE and
  writes the ledger rows in one INSERT … SELECT from the grant rows;
- two runners on the same period serialise on the row locks; the second one finds the grant
  rows of the first and inserts none. A crash loses at most the chunk in flight (rolled back
  whole); the next run (the sweeper, every few seconds) picks up the users still without a
  grant row. The run row records when every user had one (`completed_at`).
- a user created while a period is current gets that period's grant in the transaction that
  creates the user (`on_new_user`).

Deltas are computed in SQL from the locked balances, so the ledger delta is exactly what the
balance moved by: the balance still equals the sum of the ledger. Only `active` users get
allowances.
"""

from __future__ import annotations

import calendar
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, case, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import SQLCoreOperations

from backend import audit
from backend.errors import ServiceError
from db.models import Allowance, AllowanceGrant, AllowanceRun, QuotaLedger, User

log = logging.getLogger("meteor.allowances")

PERIODS = ("weekly", "monthly", "term")
MODES = ("top_up", "add")
CHUNK_SIZE = 2000
MAX_AMOUNT = 10**15
SYSTEM_ACTOR = "system:allowances"
ERROR = "ALLOWANCE_ERROR"


# --- periods (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    key: str  # "2026-W49", "2026-12", "T2026-09-01"
    start: datetime
    end: datetime  # exclusive


@dataclass(frozen=True)
class Spec:
    """An allowance's settings, detached from any session."""

    id: int
    name: str
    academy: str | None
    tokens: int
    pic_times: int
    period: str
    mode: str
    carry_cap_tokens: int | None
    carry_cap_pic_times: int | None
    terms: tuple[tuple[date, date], ...]
    starts_on: date | None
    enabled: bool

    @classmethod
    def of(cls, row: Allowance) -> Spec:
        return cls(
            id=row.id,
            name=row.name,
            academy=row.academy,
            tokens=int(row.tokens),
            pic_times=int(row.pic_times),
            period=row.period,
            mode=row.mode,
            carry_cap_tokens=None if row.carry_cap_tokens is None else int(row.carry_cap_tokens),
            carry_cap_pic_times=None if row.carry_cap_pic_times is None else int(row.carry_cap_pic_times),
            terms=parse_terms(row.terms),
            starts_on=row.starts_on,
            enabled=bool(row.enabled),
        )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def parse_terms(value: Any) -> tuple[tuple[date, date], ...]:
    """Terms as stored (JSON text) or given (a list of [first_day, last_day] pairs, ISO strings
    or dates), checked: first <= last, sorted, not overlapping."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ServiceError(ERROR, "terms must be a list of [first_day, last_day] pairs", 422) from None
    terms: list[tuple[date, date]] = []
    try:
        for pair in value:
            first, last = (d if isinstance(d, date) else date.fromisoformat(str(d)) for d in pair)
            terms.append((first, last))
    except (TypeError, ValueError):
        raise ServiceError(ERROR, "terms must be a list of [first_day, last_day] pairs of ISO dates", 422) from None
    terms.sort()
    for first, last in terms:
        if last < first:
            raise ServiceError(ERROR, f"term {first} .. {last} ends before it starts", 422)
    for (_, last), (first, _) in zip(terms, terms[1:], strict=False):
        if first <= last:
            raise ServiceError(ERROR, "terms must not overlap", 422)
    return tuple(terms)


def _period_containing(spec: Spec, moment: datetime) -> Period | None:
    day = moment.astimezone(UTC).date()
    if spec.period == "weekly":
        monday = day - timedelta(days=day.weekday())
        year, week, _ = monday.isocalendar()
        return Period(f"{year}-W{week:02d}", _midnight(monday), _midnight(monday + timedelta(days=7)))
    if spec.period == "monthly":
        first = day.replace(day=1)
        days = calendar.monthrange(first.year, first.month)[1]
        return Period(f"{first:%Y-%m}", _midnight(first), _midnight(first + timedelta(days=days)))
    for first, last in spec.terms:
        if first <= day <= last:
            return Period(f"T{first.isoformat()}", _midnight(first), _midnight(last + timedelta(days=1)))
    return None


def _started(spec: Spec, period: Period) -> bool:
    """False for periods that end before the allowance's first day."""
    return spec.starts_on is None or period.end > _midnight(spec.starts_on)


def current_period(spec: Spec, now: datetime) -> Period | None:
    """The period `now` falls in, if the allowance applies to it."""
    period = _period_containing(spec, now)
    return period if period is not None and _started(spec, period) else None


def next_period(spec: Spec, now: datetime) -> Period | None:
    """The first period that starts after `now` (and after the allowance's first day)."""
    if spec.period == "term":
        day = now.astimezone(UTC).date()
        for first, last in spec.terms:
            if first > day:
                term = Period(f"T{first.isoformat()}", _midnight(first), _midnight(last + timedelta(days=1)))
                if _started(spec, term):
                    return term
        return None
    period = _period_containing(spec, now)
    while period is not None:
        period = _period_containing(spec, period.end)
        if period is not None and _started(spec, period):
            return period
    return None


# --- SQL pieces -------------------------------------------------------------------------------


def _target(column, amount: int, cap: int | None, mode: str):
    """The balance after the grant, as SQL over the current balance `column`."""
    carry = column if cap is None else case((column > cap, literal(cap, BigInteger)), else_=column)
    if mode == "add":
        return carry + literal(amount, BigInteger)
    return case((carry > amount, carry), else_=literal(amount, BigInteger))


def _deltas(spec: Spec):
    return (
        _target(User.tokens, spec.tokens, spec.carry_cap_tokens, spec.mode) - User.tokens,
        _target(User.pic_times, spec.pic_times, spec.carry_cap_pic_times, spec.mode) - User.pic_times,
    )


def _eligible(spec: Spec, session: Session):
    """Conditions on users for the allowance: active, of the academy (any when NULL).
    On SQLite they are written so that no index can serve them (COALESCE): a chunk is a
    primary-key range, and SQLite's planner (no statistics) would otherwise scan the whole
    academy or status index for every chunk. PostgreSQL and MariaDB plan from statistics,
    which an expression would blind (PostgreSQL then nests loops over 100,000 rows)."""
    status: SQLCoreOperations[str | None]
    academy: SQLCoreOperations[str | None]
    if session.get_bind().dialect.name == "sqlite":
        status, academy = func.coalesce(User.status, ""), func.coalesce(User.academy, "")
    else:
        status, academy = User.status, User.academy
    conditions = [status == "active"]
    if spec.academy is not None:
        conditions.append(academy == spec.academy)
    return conditions


GRANT_COLUMNS = [
    "allowance_id",
    "period_key",
    "user_id",
    "run_id",
    "tokens_before",
    "pic_times_before",
    "delta_tokens",
    "delta_pic_times",
    "created_at",
]


def _insert_skipping_granted(session: Session, rows):
    """INSERT … SELECT of grant rows that skips users who already have one for the period: the
    unique index decides (ON CONFLICT DO NOTHING / INSERT IGNORE), no anti-join to plan — a
    planner working from stale statistics of a growing grants table cannot make it slow."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(AllowanceGrant).from_select(GRANT_COLUMNS, rows).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(AllowanceGrant).from_select(GRANT_COLUMNS, rows).on_conflict_do_nothing()
    return insert(AllowanceGrant).from_select(GRANT_COLUMNS, rows).prefix_with("IGNORE")


def apply_users(
    session: Session,
    spec: Spec,
    period: Period,
    user_ids: list[str] | None = None,
    *,
    after: str | None = None,
    upto: str | None = None,
    actor: str,
) -> tuple[int, int, int]:
    """Grant `period` to the eligible users without a grant among `user_ids`, or among the
    users whose id is in (`after`, `upto`] (a chunk of the primary key), in the caller's
    transaction: lock, grant rows, balances, ledger — each one set-based statement (no
    per-user round trip, no list of ids for a chunk). Returns (users, tokens, picTimes)."""
    if user_ids is not None:
        if not user_ids:
            return 0, 0, 0
        scope: list[ColumnElement[bool]] = [User.id.in_(user_ids)]
    else:
        scope = [User.id > (after or ""), User.id <= upto]
    session.execute(select(User.id).where(*scope).order_by(User.id).with_for_update()).all()
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    delta_t, delta_p = _deltas(spec)
    rows = select(
        literal(spec.id),
        literal(period.key, String(16)),
        User.id,
        literal(run_id, String(32)),
        User.tokens,
        User.pic_times,
        delta_t,
        delta_p,
        literal(now, AllowanceGrant.created_at.type),
    ).where(*scope, *_eligible(spec, session))
    session.execute(_insert_skipping_granted(session, rows))
    users, tokens, pics = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(AllowanceGrant.delta_tokens), 0),
            func.coalesce(func.sum(AllowanceGrant.delta_pic_times), 0),
        ).where(AllowanceGrant.run_id == run_id)
    ).one()
    if not users:
        return 0, 0, 0

    # one multi-table UPDATE: UPDATE … FROM (PostgreSQL, SQLite) / UPDATE users, grants (MySQL)
    session.execute(
        update(User)
        .where(User.id == AllowanceGrant.user_id, AllowanceGrant.run_id == run_id)
        .values(
            tokens=User.tokens + AllowanceGrant.delta_tokens, pic_times=User.pic_times + AllowanceGrant.delta_pic_times
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        insert(QuotaLedger).from_select(
            ["user_id", "kind", "delta_tokens", "delta_pic_times", "request_id", "actor", "note", "created_at"],
            select(
                AllowanceGrant.user_id,
                literal("allowance", String(16)),
                AllowanceGrant.delta_tokens,
                AllowanceGrant.delta_pic_times,
                literal(f"allowance:{spec.id}:{period.key}", String(64)),
                literal(actor[:64], String(64)),
                literal(f"{spec.name} {period.key}"[:255], String(255)),
                literal(now, QuotaLedger.created_at.type),
            ).where(AllowanceGrant.run_id == run_id),
        )
    )
    return int(users), int(tokens), int(pics)


def _read_committed(session: Session) -> None:
    """MySQL/MariaDB default to REPEATABLE READ, whose snapshot would hide a concurrent
    runner's committed grant rows from this transaction's later reads; each chunk reads
    fresh committed state instead (PostgreSQL's default already; SQLite has one writer)."""
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        session.connection(execution_options={"isolation_level": "READ COMMITTED"})


# --- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    allowance_id: int
    period_key: str | None
    users: int  # granted by this call
    tokens: int
    pic_times: int
    chunks: int
    completed: bool


def _spec(session: Session, allowance_id: int) -> Spec:
    row = session.get(Allowance, allowance_id)
    if row is None:
        raise ServiceError(ERROR, f"allowance {allowance_id} not found", 404)
    return Spec.of(row)


def _totals(session: Session, spec: Spec, period: Period | None) -> tuple[int, int, int]:
    """(users, tokens, picTimes) the allowance would grant now to the eligible users without
    a grant for `period` (all eligible users when None), on their current balances.

    Computed as "all eligible" minus "eligible and granted" (a join of the grant rows to
    users by primary key) instead of an anti-join: a planner without fresh statistics (a
    just-loaded table, a grants table that grew during the run) turns NOT EXISTS over
    100,000 users into a nested loop of 100,000 × 100,000."""
    delta_t, delta_p = _deltas(spec)
    aggregate = (func.count(), func.coalesce(func.sum(delta_t), 0), func.coalesce(func.sum(delta_p), 0))
    everyone = session.execute(select(*aggregate).where(*_eligible(spec, session))).one()
    if period is None:
        return int(everyone[0]), int(everyone[1]), int(everyone[2])
    granted = session.execute(
        select(*aggregate)
        .select_from(AllowanceGrant)
        .join(User, User.id == AllowanceGrant.user_id)
        .where(
            AllowanceGrant.allowance_id == spec.id, AllowanceGrant.period_key == period.key, *_eligible(spec, session)
        )
    ).one()
    return tuple(int(a) - int(b) for a, b in zip(everyone, granted, strict=True))  # type: ignore[return-value]


def remaining(session: Session, spec: Spec, period: Period) -> int:
    """Eligible users without a grant row for the period."""
    return _totals(session, spec, period)[0]


def _ensure_run(maker: sessionmaker, spec: Spec, period: Period, actor: str) -> None:
    try:
        with maker.begin() as s:
            if s.get(AllowanceRun, (spec.id, period.key)) is None:
                s.add(AllowanceRun(allowance_id=spec.id, period_key=period.key, actor=actor[:64]))
    except IntegrityError:  # another process created it at the same moment
        pass


def _finish_run(maker: sessionmaker, spec: Spec, period: Period) -> bool:
    """Mark the period complete after a full pass over the users: each chunk left every
    eligible user of its id range with a grant row, and users created since got theirs on
    register — no anti-join over all users needed (see `_totals` on planners)."""
    with maker.begin() as s:
        totals = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(AllowanceGrant.delta_tokens), 0),
                func.coalesce(func.sum(AllowanceGrant.delta_pic_times), 0),
            ).where(AllowanceGrant.allowance_id == spec.id, AllowanceGrant.period_key == period.key)
        ).one()
        s.execute(
            update(AllowanceRun)
            .where(AllowanceRun.allowance_id == spec.id, AllowanceRun.period_key == period.key)
            .values(
                users=int(totals[0]), tokens=int(totals[1]), pic_times=int(totals[2]), completed_at=datetime.now(UTC)
            )
        )
    return True


def run_period(
    maker: sessionmaker,
    allowance_id: int,
    *,
    now: datetime | None = None,
    actor: str = SYSTEM_ACTOR,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Apply the allowance's current period to every eligible user still without a grant, in
    chunks of `chunk_size` users (primary-key ranges), each chunk its own transaction.
    `progress(done, total)` (users scanned, all users) is called after each committed chunk.
    Safe to call from several processes at once and to call again after a crash."""
    now = now or datetime.now(UTC)
    with maker() as s:
        spec = _spec(s, allowance_id)
        period = current_period(spec, now)
    if not spec.enabled:
        raise ServiceError(ERROR, f"allowance {spec.name!r} is disabled", 409)
    if period is None:
        return RunResult(spec.id, None, 0, 0, 0, 0, False)
    _ensure_run(maker, spec, period, actor)
    cursor = ""
    users = tokens = pics = chunks = 0
    with maker() as s:
        everyone = int(s.scalar(select(func.count()).select_from(User)) or 0)
    scanned = 0
    while True:
        for attempt in range(5):
            try:
                with maker.begin() as s:
                    _read_committed(s)
                    # the chunk: the next `chunk_size` ids in primary-key order (an index range)
                    upto = s.scalar(
                        select(User.id).where(User.id > cursor).order_by(User.id).offset(chunk_size - 1).limit(1)
                    ) or s.scalar(select(func.max(User.id)).where(User.id > cursor))
                    got = None if upto is None else apply_users(s, spec, period, after=cursor, upto=upto, actor=actor)
                break
            except (IntegrityError, OperationalError) as exc:  # a concurrent grant or a deadlock: retry
                if attempt == 4:
                    raise
                log.info("allowance %s %s: chunk retried (%s)", spec.id, period.key, type(exc).__name__)
        if got is None:
            break
        cursor = upto
        chunks += 1
        users, tokens, pics = users + got[0], tokens + got[1], pics + got[2]
        scanned = min(scanned + chunk_size, everyone)
        if progress is not None:
            progress(scanned, max(everyone, scanned))
    completed = _finish_run(maker, spec, period)
    return RunResult(spec.id, period.key, users, tokens, pics, chunks, completed)


def apply_due(maker: sessionmaker, *, now: datetime | None = None) -> list[RunResult]:
    """Run every enabled allowance whose current period is not complete (the sweeper)."""
    now = now or datetime.now(UTC)
    with maker() as s:
        specs = [Spec.of(a) for a in s.scalars(select(Allowance).where(Allowance.enabled.is_(True)))]
        due = []
        for spec in specs:
            period = current_period(spec, now)
            if period is None:
                continue
            run = s.get(AllowanceRun, (spec.id, period.key))
            if run is None or run.completed_at is None:
                due.append(spec.id)
    results = []
    for allowance_id in due:
        result = run_period(maker, allowance_id, now=now)
        if result.users:
            log.info("allowance %s %s: %d users granted", allowance_id, result.period_key, result.users)
        results.append(result)
    return results


def on_new_user(session: Session, user_id: str, academy: str | None, *, now: datetime | None = None) -> int:
    """Grant a new user the current period of every enabled allowance of their academy, in
    the transaction that creates the user. Returns how many allowances were applied."""
    now = now or datetime.now(UTC)
    stmt = select(Allowance).where(Allowance.enabled.is_(True))
    applied = 0
    for row in session.scalars(stmt):
        spec = Spec.of(row)
        if spec.academy is not None and spec.academy != academy:
            continue
        period = current_period(spec, now)
        if period is not None:
            applied += apply_users(session, spec, period, [user_id], actor=SYSTEM_ACTOR)[0]
    return applied


# --- admin: CRUD, list, preview ---------------------------------------------------------------


def _check(values: dict[str, Any]) -> dict[str, Any]:
    name = (values.get("name") or "").strip()
    if not name or len(name) > 64:
        raise ServiceError(ERROR, "name must be 1-64 characters", 422)
    values["name"] = name
    values["academy"] = (values.get("academy") or "").strip() or None
    if values.get("period") not in PERIODS:
        raise ServiceError(ERROR, f"period must be one of {', '.join(PERIODS)}", 422)
    if values.get("mode") not in MODES:
        raise ServiceError(ERROR, f"mode must be one of {', '.join(MODES)}", 422)
    for key in ("tokens", "pic_times", "carry_cap_tokens", "carry_cap_pic_times"):
        v = values.get(key)
        if v is None and key.startswith("carry"):
            continue
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_AMOUNT:
            raise ServiceError(ERROR, f"{key} must be a whole number from 0 to {MAX_AMOUNT}", 422)
    terms = parse_terms(values.get("terms"))
    if values["period"] == "term" and not terms:
        raise ServiceError(ERROR, "a term allowance needs at least one term [first_day, last_day]", 422)
    values["terms"] = json.dumps([[a.isoformat(), b.isoformat()] for a, b in terms]) if terms else None
    return values


FIELDS = (
    "name",
    "academy",
    "tokens",
    "pic_times",
    "period",
    "mode",
    "carry_cap_tokens",
    "carry_cap_pic_times",
    "terms",
    "starts_on",
    "enabled",
)


def create(session: Session, *, actor: str, **fields: Any) -> Allowance:
    values = {
        "tokens": 0,
        "pic_times": 0,
        "period": "monthly",
        "mode": "top_up",
        "carry_cap_tokens": None,
        "carry_cap_pic_times": None,
        "terms": None,
        "starts_on": None,
        "enabled": True,
    }
    values.update({k: v for k, v in fields.items() if k in FIELDS})
    values = _check(values)
    if session.scalar(select(Allowance.id).where(Allowance.name == values["name"])) is not None:
        raise ServiceError(ERROR, f"an allowance named {values['name']!r} exists", 409)
    row = Allowance(**values, created_by=actor[:64])
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="add_allowance", target_type="allowance", target_id=row.id, detail=values)
    return row


def modify(session: Session, allowance_id: int, *, actor: str, **changes: Any) -> Allowance:
    """Change some fields (those given, not None). A change applies from the next period on:
    users already granted this period keep their grant."""
    row = session.get(Allowance, allowance_id, with_for_update=True)
    if row is None:
        raise ServiceError(ERROR, f"allowance {allowance_id} not found", 404)
    given = {k: v for k, v in changes.items() if k in FIELDS and v is not None}
    for cap in ("carry_cap_tokens", "carry_cap_pic_times"):
        if changes.get(f"clear_{cap}"):
            given[cap] = None
    values = {k: getattr(row, k) for k in FIELDS}
    values.update(given)
    values = _check(values)
    if values["name"] != row.name and session.scalar(select(Allowance.id).where(Allowance.name == values["name"])):
        raise ServiceError(ERROR, f"an allowance named {values['name']!r} exists", 409)
    for key, value in values.items():
        setattr(row, key, value)
    row.updated_at = datetime.now(UTC)
    session.flush()
    audit.record(
        session, actor=actor, action="modify_allowance", target_type="allowance", target_id=row.id, detail=given
    )
    return row


def delete(session: Session, allowance_id: int, *, actor: str) -> None:
    """Remove an allowance; its grant rows and ledger rows stay (history)."""
    row = session.get(Allowance, allowance_id)
    if row is None:
        raise ServiceError(ERROR, f"allowance {allowance_id} not found", 404)
    audit.record(
        session,
        actor=actor,
        action="delete_allowance",
        target_type="allowance",
        target_id=row.id,
        detail={"name": row.name},
    )
    session.delete(row)


def record_run(session: Session, result: RunResult, *, actor: str) -> None:
    """Audit a run started by an admin (the sweeper's runs are in the ledger and run rows)."""
    audit.record(
        session,
        actor=actor,
        action="run_allowance",
        target_type="allowance",
        target_id=result.allowance_id,
        detail={
            "period": result.period_key,
            "users": result.users,
            "tokens": result.tokens,
            "pic_times": result.pic_times,
            "completed": result.completed,
        },
    )


@dataclass(frozen=True)
class Preview:
    allowance_id: int
    period_key: str | None
    starts_at: datetime | None
    users: int
    tokens: int
    pic_times: int
    pending: bool  # True: the current period still has users to grant; False: the next period


def preview(session: Session, allowance_id: int, *, now: datetime | None = None) -> Preview:
    """What the next run grants: the rest of the current period if it is incomplete, else
    the next period (estimated on today's balances). Users and totals, computed in SQL."""
    now = now or datetime.now(UTC)
    spec = _spec(session, allowance_id)
    period = current_period(spec, now)
    if period is not None:
        users, tokens, pics = _totals(session, spec, period)
        if users > 0:
            return Preview(spec.id, period.key, period.start, users, tokens, pics, True)
    period = next_period(spec, now)
    if period is None:
        return Preview(spec.id, None, None, 0, 0, 0, False)
    users, tokens, pics = _totals(session, spec, None)
    return Preview(spec.id, period.key, period.start, users, tokens, pics, False)


def listing(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every allowance with its current period, how many users have it, and its next run."""
    now = now or datetime.now(UTC)
    out = []
    for row in session.scalars(select(Allowance).order_by(Allowance.name)):
        spec = Spec.of(row)
        period = current_period(spec, now)
        granted = 0
        complete = False
        if period is not None:
            granted = int(
                session.scalar(
                    select(func.count())
                    .select_from(AllowanceGrant)
                    .where(AllowanceGrant.allowance_id == spec.id, AllowanceGrant.period_key == period.key)
                )
                or 0
            )
            run = session.get(AllowanceRun, (spec.id, period.key))
            complete = run is not None and run.completed_at is not None
        upcoming = next_period(spec, now)
        next_run = None
        if spec.enabled:
            next_run = now if (period is not None and not complete) else (upcoming.start if upcoming else None)
        out.append(
            {
                "id": spec.id,
                "name": spec.name,
                "academy": spec.academy,
                "tokens": spec.tokens,
                "pic_times": spec.pic_times,
                "period": spec.period,
                "mode": spec.mode,
                "carry_cap_tokens": spec.carry_cap_tokens,
                "carry_cap_pic_times": spec.carry_cap_pic_times,
                "terms": [[a.isoformat(), b.isoformat()] for a, b in spec.terms],
                "starts_on": spec.starts_on.isoformat() if spec.starts_on else None,
                "enabled": spec.enabled,
                "current_period": period.key if period else None,
                "granted_this_period": granted,
                "current_complete": complete,
                "next_run": next_run.isoformat() if next_run else None,
            }
        )
    return out
