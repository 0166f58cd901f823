"""Daily roll-up of usage_records, so the dashboard's charts cost the same on any traffic.

Usage rows are append-only and stamped with the time they are written (the flush of the
short transaction that records a request), so a UTC day that ended more than `SETTLE` ago
never changes again. Each such day is summed once into `usage_daily` (per day, academy,
model, kind and outcome; '' for a missing academy or model) and marked in
`usage_rollup_days`. A chart over a window reads `usage_daily` for the marked days and the
raw table only for the rest (today, found through the created_at index): its cost follows
the days, academies and models in the window, not the rows.

Twice at once is safe: a day's marker is inserted first, in one savepoint with the day's
rows. A second process rolling up the same day waits on the marker's primary key and, once
the first commits, gets a unique violation that undoes its savepoint, so no day is counted
twice (SQLite serialises the two transactions outright: every one starts BEGIN IMMEDIATE).
Readers take only the days whose marker they see and bound every `usage_daily` read by those
days, so a roll-up committed between two statements cannot be counted twice either.

The heaviest users of a window cannot be summed per academy: `usage_top_users` keeps the
top `TOP_KEEP` users of each rolled range, computed once per range (in practice once a day
per window length, by the API's sweeper or the first Overview of the day), and `top_users`
merges it exactly with the raw rows after the range.

Usage rows inserted later with an old created_at (a bulk import, `seed-demo`) must call
`invalidate(session, since=...)`, which drops the roll-up from that day on; it is rebuilt
on the next read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, false, func, insert, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from db.models import UsageDaily, UsageRecord, UsageRollupDay, UsageTopUsers

SETTLE = timedelta(minutes=15)  # a day is final this long after midnight UTC (clock skew, commits in flight)
# Users kept per ranking. top_users is exact for any limit up to this; the longer the list, the
# fewer of today's users need their past looked up (1,000 leaves a handful on 1M rows).
TOP_KEEP = 1000
WINDOW_DAYS = (7, 14, 30, 90)  # the dashboard's windows, whose rankings the sweeper prepares
USED_TOKENS = UsageRecord.prompt_tokens + UsageRecord.completion_tokens
_SESSION_KEY = "meteor_usage_rolled_through"

log = logging.getLogger("meteor.usage_rollup")


def day_start(day: date) -> datetime:
    """Midnight UTC at the start of `day`."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def complete_through(now: datetime | None = None) -> date:
    """The last UTC day whose usage rows are final at `now` (default: the clock)."""
    now = now or datetime.now(UTC)
    return (now - SETTLE).astimezone(UTC).date() - timedelta(days=1)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _roll_day(session: Session, day: date) -> int:
    """Marker first, then the day's sums, in the caller's savepoint. Returns the day's rows."""
    marker = UsageRollupDay(day=day, requests=0)
    session.add(marker)
    session.flush()  # a concurrent roll-up of this day waits here, then fails with a unique violation
    academy = func.coalesce(UsageRecord.academy, "")
    model = func.coalesce(UsageRecord.model, "")
    rows = session.execute(
        select(
            academy,
            model,
            UsageRecord.kind,
            UsageRecord.status,
            func.count(),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
            func.coalesce(func.sum(UsageRecord.latency_ms), 0),
            func.count(UsageRecord.latency_ms),
            func.coalesce(func.sum(UsageRecord.ttft_ms), 0),
            func.count(UsageRecord.ttft_ms),
        )
        .where(UsageRecord.created_at >= day_start(day), UsageRecord.created_at < day_start(day + timedelta(days=1)))
        .group_by(academy, model, UsageRecord.kind, UsageRecord.status)
    ).all()
    # A plain read then a multi-row insert: INSERT ... SELECT would take shared next-key locks on
    # the scanned usage rows on MySQL/MariaDB (REPEATABLE READ) and hold up concurrent writers.
    if rows:
        session.execute(
            insert(UsageDaily),
            [
                {
                    "day": day,
                    "academy": r[0],
                    "model": r[1],
                    "kind": r[2],
                    "status": r[3],
                    "requests": int(r[4]),
                    "prompt_tokens": int(r[5]),
                    "completion_tokens": int(r[6]),
                    "latency_ms_sum": int(r[7] or 0),
                    "latency_count": int(r[8]),
                    "ttft_ms_sum": int(r[9] or 0),
                    "ttft_count": int(r[10]),
                }
                for r in rows
            ],
        )
    marker.requests = sum(int(r[4]) for r in rows)
    session.flush()
    return marker.requests


def ensure_rolled_up(session: Session, *, through: date) -> int:
    """Roll up every day from the first usage row's day to `through` (inclusive) that is not
    rolled up yet, each in its own savepoint of the caller's transaction (commit to keep them).
    `through` must be a complete day (see `complete_through`). Days another process rolls up
    at the same moment are skipped. Cheap when nothing is missing (two indexed queries).
    Returns how many days this call rolled up."""
    if session.info.get(_SESSION_KEY) == through:
        return 0
    first = session.scalar(select(func.min(UsageRecord.created_at)))
    if first is None or first.astimezone(UTC).date() > through:
        session.info[_SESSION_KEY] = through
        return 0
    first_day = first.astimezone(UTC).date()
    expected = (through - first_day).days + 1
    in_range = (UsageRollupDay.day >= first_day, UsageRollupDay.day <= through)
    if session.scalar(select(func.count()).select_from(UsageRollupDay).where(*in_range)) == expected:
        session.info[_SESSION_KEY] = through
        return 0
    done = {_as_date(d) for d in session.scalars(select(UsageRollupDay.day).where(*in_range))}
    rolled = 0
    for offset in range(expected):
        day = first_day + timedelta(days=offset)
        if day in done:
            continue
        try:
            with session.begin_nested():
                _roll_day(session, day)
        except IntegrityError:
            continue  # another process rolled this day up first
        except OperationalError as exc:
            # lock timeout or deadlock against another roll-up: leave the rest to a later call;
            # readers fall back to the raw rows of any day without a marker
            log.warning("usage roll-up stopped at %s: %s", day, exc.orig if exc.orig is not None else exc)
            return rolled
        rolled += 1
    if rolled:  # rankings of ranges that end before the newest complete day are not read again
        session.execute(delete(UsageTopUsers).where(UsageTopUsers.to_day <= through))
    session.info[_SESSION_KEY] = through
    return rolled


@dataclass(frozen=True)
class Window:
    """The days [start, end) of a chart, split into the rolled-up run [rolled_from, rolled_to)
    read from usage_daily and the rest, read from usage_records."""

    start: date
    end: date
    rolled_from: date
    rolled_to: date

    @property
    def has_rolled(self) -> bool:
        return self.rolled_from < self.rolled_to

    def daily_condition(self) -> ColumnElement[bool]:
        """usage_daily rows of the rolled-up run."""
        if not self.has_rolled:
            return false()
        return and_(UsageDaily.day >= self.rolled_from, UsageDaily.day < self.rolled_to)

    def raw_ranges(self) -> list[tuple[date, date]]:
        """The day ranges of the window that are not rolled up."""
        if not self.has_rolled:
            return [(self.start, self.end)]
        return [(a, b) for a, b in ((self.start, self.rolled_from), (self.rolled_to, self.end)) if a < b]

    def raw_condition(self) -> ColumnElement[bool]:
        """usage_records rows of the days that are not rolled up (indexed created_at ranges)."""
        ranges = [
            and_(UsageRecord.created_at >= day_start(a), UsageRecord.created_at < day_start(b))
            for a, b in self.raw_ranges()
        ]
        if not ranges:
            return false()
        return ranges[0] if len(ranges) == 1 else or_(*ranges)


def window(session: Session, start: date, end: date, *, now: datetime | None = None) -> Window:
    """Roll up what is missing (see `ensure_rolled_up`), then split the days [start, end)."""
    ensure_rolled_up(session, through=complete_through(now))
    days = sorted(
        _as_date(d)
        for d in session.scalars(
            select(UsageRollupDay.day).where(UsageRollupDay.day >= start, UsageRollupDay.day < end)
        )
    )
    if not days:
        return Window(start, end, start, start)
    run_end = days[0]
    for day in days:  # the first unbroken run of marked days
        if day != run_end:
            break
        run_end = day + timedelta(days=1)
    return Window(start, end, days[0], run_end)


def raw_window(start: date, end: date) -> Window:
    """A window read entirely from usage_records (e.g. one user's rows, through their index)."""
    return Window(start, end, start, start)


def count_usage(
    session: Session, *, academy: str | None = None, date_from: date | None = None, date_to: date | None = None
) -> int:
    """How many usage rows there are (of one academy; within the whole UTC days date_from to
    date_to, both inclusive, either open): the roll-up's totals for the rolled-up days plus an
    indexed count of the other rows. Uses what is rolled up already; rolls nothing up."""
    low, high, marked = session.execute(
        select(func.min(UsageRollupDay.day), func.max(UsageRollupDay.day), func.count())
    ).one()
    run_from: date | None = None
    run_to: date | None = None
    if marked and (_as_date(high) - _as_date(low)).days + 1 == marked:  # one unbroken run
        run_from, run_to = _as_date(low), _as_date(high) + timedelta(days=1)
        if date_from is not None:
            run_from = max(run_from, date_from)
        if date_to is not None:
            run_to = min(run_to, date_to + timedelta(days=1))
    where = []
    if academy:
        where.append(UsageRecord.academy == academy)
    if date_from is not None:
        where.append(UsageRecord.created_at >= day_start(date_from))
    if date_to is not None:
        where.append(UsageRecord.created_at < day_start(date_to + timedelta(days=1)))
    rolled: int | None = 0
    if run_from is not None and run_to is not None and run_from < run_to:
        if academy:
            rolled = session.scalar(
                select(func.coalesce(func.sum(UsageDaily.requests), 0)).where(
                    UsageDaily.academy == academy, UsageDaily.day >= run_from, UsageDaily.day < run_to
                )
            )
        else:
            rolled = session.scalar(
                select(func.coalesce(func.sum(UsageRollupDay.requests), 0)).where(
                    UsageRollupDay.day >= run_from, UsageRollupDay.day < run_to
                )
            )
        where.append(or_(UsageRecord.created_at < day_start(run_from), UsageRecord.created_at >= day_start(run_to)))
    raw = session.scalar(select(func.count()).select_from(UsageRecord).where(*where))
    return int(rolled or 0) + int(raw or 0)


# --- heaviest users ------------------------------------------------------------------------


def _user_totals(session: Session, condition: ColumnElement[bool], user_ids: list[str] | None = None):
    where = [condition, UsageRecord.user_id.is_not(None), UsageRecord.user_id != ""]
    if user_ids is not None:
        where.append(UsageRecord.user_id.in_(user_ids))
    rows = session.execute(
        select(UsageRecord.user_id, func.coalesce(func.sum(USED_TOKENS), 0), func.count())
        .where(*where)
        .group_by(UsageRecord.user_id)
    ).all()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def ranking(session: Session, rolled_from: date, rolled_to: date) -> list[tuple[str, int, int]]:
    """The top `TOP_KEEP` users by tokens of the rolled-up days [rolled_from, rolled_to) as
    (user_id, tokens, requests), heaviest first: read from usage_top_users, or computed from
    usage_records once and stored (in a savepoint of the caller's transaction)."""
    key = (UsageTopUsers.from_day == rolled_from, UsageTopUsers.to_day == rolled_to)
    stored = session.scalar(select(UsageTopUsers.ranking).where(*key))
    if stored is not None:
        return [(u, int(t), int(r)) for u, t, r in json.loads(stored)]
    total = func.coalesce(func.sum(USED_TOKENS), 0)
    rows = session.execute(
        select(UsageRecord.user_id, total, func.count())
        .where(
            UsageRecord.created_at >= day_start(rolled_from),
            UsageRecord.created_at < day_start(rolled_to),
            UsageRecord.user_id.is_not(None),
            UsageRecord.user_id != "",
        )
        .group_by(UsageRecord.user_id)
        .order_by(total.desc(), UsageRecord.user_id)
        .limit(TOP_KEEP)
    ).all()
    result = [(user, int(tokens), int(requests)) for user, tokens, requests in rows if user is not None]
    try:
        with session.begin_nested():
            session.add(UsageTopUsers(from_day=rolled_from, to_day=rolled_to, ranking=json.dumps(result)))
            session.flush()
    except (IntegrityError, OperationalError):
        pass  # another process stored the same ranking (or holds the lock): ours is as good
    return result


def top_users(session: Session, win: Window, *, limit: int) -> list[tuple[str, int, int]]:
    """The `limit` heaviest users of a window as (user_id, tokens, requests), heaviest first
    (ties by user id). Exact: a user missing from the stored ranking has at most its last
    entry's tokens there, so only the few users of the raw days who could still pass the
    `limit`-th total are looked up in usage_records (by the user_id, created_at index)."""
    raw = _user_totals(session, win.raw_condition())
    if not win.has_rolled or limit > TOP_KEEP:
        if win.has_rolled:  # more than a ranking holds: sum every row of the window
            raw = _user_totals(session, or_(win.raw_condition(), _rolled_rows(win)))
        return sorted(((u, t, r) for u, (t, r) in raw.items()), key=lambda x: (-x[1], x[0]))[:limit]
    stored = ranking(session, win.rolled_from, win.rolled_to)
    complete = len(stored) < TOP_KEEP  # every user with usage in the range is listed
    ceiling = 0 if complete else stored[-1][1]
    totals = {u: (t, r) for u, t, r in stored}
    for user_id, (t, r) in raw.items():
        if user_id in totals:
            totals[user_id] = (totals[user_id][0] + t, totals[user_id][1] + r)
    known = sorted((t for t, _ in totals.values()), reverse=True)
    floor = known[limit - 1] if len(known) >= limit else 0
    unsure = []
    for user_id, (t, r) in raw.items():
        if user_id in totals:
            continue
        if complete:
            totals[user_id] = (t, r)
        elif ceiling + t >= floor:
            unsure.append(user_id)
        # else: even with the most the ranking leaves out, this user cannot reach the top
    for i in range(0, len(unsure), 500):
        chunk = unsure[i : i + 500]
        past = _user_totals(session, _rolled_rows(win), chunk)
        for user_id in chunk:
            t, r = past.get(user_id, (0, 0))
            totals[user_id] = (t + raw[user_id][0], r + raw[user_id][1])
    return sorted(((u, t, r) for u, (t, r) in totals.items()), key=lambda x: (-x[1], x[0]))[:limit]


def _rolled_rows(win: Window) -> ColumnElement[bool]:
    return and_(UsageRecord.created_at >= day_start(win.rolled_from), UsageRecord.created_at < day_start(win.rolled_to))


# --- upkeep --------------------------------------------------------------------------------


def catch_up(session: Session, *, now: datetime | None = None) -> int:
    """Roll up the complete days and prepare the top-user rankings of the dashboard's windows
    (`WINDOW_DAYS`), so no page view pays for them. Cheap when both are done. Run by the API's
    sweeper thread. Returns how many days were rolled up."""
    through = complete_through(now)
    rolled = ensure_rolled_up(session, through=through)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    for days in WINDOW_DAYS:
        win = window(session, today - timedelta(days=days - 1), today + timedelta(days=1), now=now)
        if win.has_rolled:
            ranking(session, win.rolled_from, win.rolled_to)
    return rolled


def invalidate(session: Session, *, since: date) -> None:
    """Forget the roll-up from `since` on (after inserting usage rows dated in the past); the
    next read rolls those days up again."""
    session.execute(delete(UsageDaily).where(UsageDaily.day >= since))
    session.execute(delete(UsageRollupDay).where(UsageRollupDay.day >= since))
    session.execute(delete(UsageTopUsers).where(UsageTopUsers.to_day > since))
    session.info.pop(_SESSION_KEY, None)
