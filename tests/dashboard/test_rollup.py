"""The daily usage roll-up on every database: the charts read from it give the same numbers
as aggregates computed straight over usage_records (NULL academies, models and users
included), rolling up twice changes nothing, two processes rolling up the same days at once
count them once, and bulk loads into rolled-up days are picked up again."""

from __future__ import annotations

import queue
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, text

from backend.dashboard import admin as dashboard
from backend.reporting import browse
from backend.reporting import rollup as usage_rollup
from backend.reporting.demo import seed_demo
from db.models import UsageDaily, UsageRecord, UsageRollupDay, UsageTopUsers, User
from tests.factories import make_settings, make_user

pytestmark = pytest.mark.committed  # two processes and the sweeper roll up at once

SPAN = 12  # days of usage, today included
WAIT = 30  # seconds any wait on another thread may take before the test fails


def _midnight(days_ago: int) -> datetime:
    return usage_rollup.day_start(datetime.now(UTC).date() - timedelta(days=days_ago))


def _first_day():
    """The oldest day of the data set."""
    return datetime.now(UTC).date() - timedelta(days=SPAN - 1)


def _complete_days() -> int:
    """How many days of the data set are complete (SPAN - 1, one less just after midnight)."""
    return (usage_rollup.complete_through() - _first_day()).days + 1


def _ranked_ranges() -> set[tuple]:
    """The (from, to) day ranges whose top users the sweeper ranks for the dashboard's windows."""
    today, to = datetime.now(UTC).date(), usage_rollup.complete_through() + timedelta(days=1)
    return {(max(today - timedelta(days=w - 1), _first_day()), to) for w in usage_rollup.WINDOW_DAYS}


def _usage_dataset(maker, settings) -> dict[str, object]:
    """Usage rows over SPAN days (today too) from three users (one without an academy) and the
    admin console (no user, no academy), with models and latencies sometimes missing and rows
    on the very first and last microsecond of a day. Returns the users by name."""
    users = {
        "alice": make_user(maker, settings, username="alice", academy="CS"),
        "bob": make_user(maker, settings, username="bob", academy="Math"),
        "carol": make_user(maker, settings, username="carol", academy=None),
    }
    rng = random.Random(6)
    now = datetime.now(UTC)
    rows = []
    for days_ago in range(SPAN):
        start = _midnight(days_ago)
        seconds = (now - start).total_seconds() if days_ago == 0 else 86_400
        stamps = [start + timedelta(seconds=rng.uniform(0, seconds)) for _ in range(rng.randint(4, 12))]
        stamps.append(start)  # first microsecond of the day
        if days_ago:
            stamps.append(start + timedelta(days=1) - timedelta(microseconds=1))  # last one
        for when in stamps:
            who = rng.choice([*users.values(), None])
            model = rng.choice(["m1", "m2", "whisper", None])
            kind = "voice" if model == "whisper" else rng.choice(["chat", "picture"])
            latency = rng.choice([None, rng.randint(50, 900)])
            rows.append(
                UsageRecord(
                    user_id=who.id if who else None,
                    academy=who.academy if who else None,
                    admin_name=None if who else "root",
                    kind=kind,
                    model=model,
                    prompt_tokens=rng.randint(0, 400),
                    completion_tokens=rng.randint(0, 300),
                    latency_ms=latency,
                    ttft_ms=rng.choice([None, latency // 3]) if latency else None,
                    status=rng.choice(["ok", "ok", "ok", "error", "cancelled"]),
                    created_at=min(when, now),
                )
            )
    with maker.begin() as s:
        s.add_all(rows)
    return users


# --- the reference: aggregates straight over usage_records, in Python ----------------------


def _raw_rows(session, days: int, academy: str | None = None, user_id: str | None = None):
    start = _midnight(days - 1)
    rows = session.scalars(select(UsageRecord).where(UsageRecord.created_at >= start)).all()
    return [r for r in rows if (academy is None or r.academy == academy) and (user_id is None or r.user_id == user_id)]


def _expected_per_day(session, days: int, academy: str | None = None, user_id: str | None = None):
    today = datetime.now(UTC).date()
    out = []
    rows = _raw_rows(session, days, academy, user_id)
    for i in range(days):
        day = today - timedelta(days=days - 1 - i)
        mine = [r for r in rows if r.created_at.astimezone(UTC).date() == day]
        latencies = [r.latency_ms for r in mine if r.latency_ms is not None]
        ttfts = [r.ttft_ms for r in mine if r.ttft_ms is not None]
        out.append(
            {
                "day": day.isoformat(),
                "tokens": sum(r.prompt_tokens + r.completion_tokens for r in mine),
                "requests": len(mine),
                "latency_ms": round(sum(latencies) / len(latencies), 1) if latencies else None,
                "ttft_ms": round(sum(ttfts) / len(ttfts), 1) if ttfts else None,
            }
        )
    return out


def _expected_grouped(session, days: int, key, user_id: str | None = None):
    totals: dict[str, list[int]] = {}
    for r in _raw_rows(session, days, user_id=user_id):
        entry = totals.setdefault(key(r) or "", [0, 0])
        entry[0] += r.prompt_tokens + r.completion_tokens
        entry[1] += 1
    return sorted(((name, t, n) for name, (t, n) in totals.items()), key=lambda x: (-x[1], x[0]))


def _expected_top(session, days: int, limit: int):
    return [
        (user_id, tokens, requests)
        for user_id, tokens, requests in _expected_grouped(session, days, lambda r: r.user_id)
        if user_id
    ][:limit]


def _expected_status(session, days: int, user_id: str | None = None):
    counts: dict[str, int] = {}
    for r in _raw_rows(session, days, user_id=user_id):
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def _assert_charts_match_raw(session, users, windows=(1, 2, 5, SPAN, 30)):
    names = dict(session.execute(select(User.id, User.username)).all())
    for days in windows:
        assert dashboard.tokens_per_day(session, days=days) == _expected_per_day(session, days), days
        assert dashboard.tokens_per_day(session, days=days, academy="CS") == _expected_per_day(
            session, days, academy="CS"
        )
        bob = users["bob"].id
        assert dashboard.tokens_per_day(session, days=days, user_id=bob) == _expected_per_day(
            session, days, user_id=bob
        )
        model = [
            {"model": m or "-", "tokens": t, "requests": n}
            for m, t, n in _expected_grouped(session, days, lambda r: r.model)
        ]
        assert dashboard.tokens_per_model(session, days=days) == model
        academy = [
            {"academy": a or "-", "tokens": t, "requests": n}
            for a, t, n in _expected_grouped(session, days, lambda r: r.academy)
        ]
        assert dashboard.tokens_per_academy(session, days=days) == academy
        top = [(u["username"], u["tokens"], u["requests"]) for u in dashboard.top_users(session, days=days, limit=2)]
        assert top == [(names[u], t, n) for u, t, n in _expected_top(session, days, 2)]
        counts = {r["status"]: r["requests"] for r in dashboard.status_counts(session, days=days)}
        assert counts == _expected_status(session, days)
        mine = {r["status"]: r["requests"] for r in dashboard.status_counts(session, days=days, user_id=bob)}
        assert mine == _expected_status(session, days, user_id=bob)


def _daily_snapshot(session):
    rows = session.execute(
        select(
            UsageDaily.day,
            UsageDaily.academy,
            UsageDaily.model,
            UsageDaily.kind,
            UsageDaily.status,
            UsageDaily.requests,
            UsageDaily.prompt_tokens,
            UsageDaily.completion_tokens,
            UsageDaily.latency_ms_sum,
            UsageDaily.latency_count,
            UsageDaily.ttft_ms_sum,
            UsageDaily.ttft_count,
        )
    ).all()
    markers = session.execute(select(UsageRollupDay.day, UsageRollupDay.requests)).all()
    return sorted(map(tuple, rows)), sorted(map(tuple, markers))


def _raw_requests_through(session, through) -> int:
    end = usage_rollup.day_start(through + timedelta(days=1))
    return int(session.scalar(select(func.count()).where(UsageRecord.created_at < end)))


# --- tests -----------------------------------------------------------------------------------


def test_charts_from_the_rollup_equal_the_raw_aggregates(maker, settings):
    users = _usage_dataset(maker, settings)
    through = usage_rollup.complete_through()
    with maker.begin() as s:  # the first chart rolls the complete days up and keeps them
        dashboard.tokens_per_day(s, days=30)
    with maker() as s:
        rolled = set(s.scalars(select(UsageRollupDay.day)))
        assert rolled == {_first_day() + timedelta(days=i) for i in range(_complete_days())}
        # usage_daily holds every row of the rolled days exactly once, '' for NULL academy / model
        assert s.scalar(select(func.sum(UsageDaily.requests))) == _raw_requests_through(s, through)
        assert s.scalar(select(func.count()).where(UsageDaily.academy == "")) > 0
        assert s.scalar(select(func.count()).where(UsageDaily.model == "")) > 0
        _assert_charts_match_raw(s, users)


def test_charts_read_the_rollup_for_complete_days(maker, settings):
    """Proof that the charts read usage_daily: raw rows of a rolled-up day removed behind the
    roll-up's back leave that day's bar as it was."""
    _usage_dataset(maker, settings)
    with maker.begin() as s:
        before = dashboard.tokens_per_day(s, days=SPAN)
    old = _midnight(4)
    with maker.begin() as s:
        s.execute(delete(UsageRecord).where(UsageRecord.created_at >= old, UsageRecord.created_at < _midnight(3)))
    with maker() as s:
        assert dashboard.tokens_per_day(s, days=SPAN) == before
        assert before[-5]["requests"] > 0


def test_rolling_up_twice_changes_nothing(maker, settings):
    _usage_dataset(maker, settings)
    through = usage_rollup.complete_through()
    with maker.begin() as s:
        assert usage_rollup.ensure_rolled_up(s, through=through) == _complete_days()
    with maker() as s:
        first = _daily_snapshot(s)
        assert first[0] and len(first[1]) == _complete_days()
    with maker.begin() as s:
        assert usage_rollup.ensure_rolled_up(s, through=through) == 0
        assert usage_rollup.catch_up(s) == 0
    with maker.begin() as s:
        assert usage_rollup.catch_up(s) == 0
        rankings = s.execute(select(UsageTopUsers.from_day, UsageTopUsers.to_day, UsageTopUsers.ranking)).all()
    with maker.begin() as s:
        assert usage_rollup.catch_up(s) == 0
        assert s.execute(select(UsageTopUsers.from_day, UsageTopUsers.to_day, UsageTopUsers.ranking)).all() == rankings
    with maker() as s:
        assert _daily_snapshot(s) == first
        assert {(r[0], r[1]) for r in rankings} == _ranked_ranges()


def _backend_id(session) -> int | None:
    """This connection's id on the server (None on SQLite)."""
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        return int(session.scalar(text("SELECT pg_backend_pid()")))
    if dialect in ("mysql", "mariadb"):
        return int(session.scalar(text("SELECT CONNECTION_ID()")))
    return None


def _is_waiting_on_a_lock(maker, backend_id: int) -> bool:
    with maker() as s:
        if s.bind.dialect.name == "postgresql":
            query = "SELECT count(*) FROM pg_stat_activity WHERE pid = :id AND wait_event_type = 'Lock'"
        else:
            # The processlist, not innodb_trx: MariaDB's trx_mysql_thread_id can go stale once
            # server threads are reused, so only the connection's running statement is reliable.
            query = (
                "SELECT count(*) FROM information_schema.processlist "
                "WHERE id = :id AND command = 'Query' AND info LIKE 'INSERT INTO usage_rollup_days%'"
            )
        return bool(s.scalar(text(query), {"id": backend_id}))


def test_two_processes_rolling_up_the_same_days_count_them_once(maker, settings):
    """The first roll-up holds its uncommitted markers until the second is waiting on them
    (PostgreSQL / MariaDB: seen in the server's lock table; SQLite: BEGIN IMMEDIATE queues the
    second transaction); the second then gets unique violations, skips every day and the
    totals are those of the raw rows."""
    _usage_dataset(maker, settings)
    through = usage_rollup.complete_through()
    release_first, first_rolled = threading.Event(), threading.Event()
    results: dict[str, int | BaseException] = {}
    second_id: queue.Queue[int | None] = queue.Queue()

    def first():
        try:
            with maker.begin() as s:
                results["first"] = usage_rollup.ensure_rolled_up(s, through=through)
                first_rolled.set()
                assert release_first.wait(WAIT), "the second roll-up never queued up"
        except BaseException as exc:  # surfaced by the assertions below
            results["first"] = exc
            first_rolled.set()

    def second():
        try:
            with maker.begin() as s:
                if s.bind.dialect.name != "sqlite":
                    second_id.put(_backend_id(s))  # its snapshot is taken before the first commits
                results["second"] = usage_rollup.ensure_rolled_up(s, through=through)
        except BaseException as exc:
            results["second"] = exc

    a = threading.Thread(target=first)
    a.start()
    assert first_rolled.wait(WAIT)
    b = threading.Thread(target=second)
    b.start()
    if maker.kw["bind"].dialect.name != "sqlite":
        backend_id = second_id.get(timeout=WAIT)
        waiting = threading.Event()
        for _ in range(WAIT * 20):
            if _is_waiting_on_a_lock(maker, backend_id):
                waiting.set()
                break
            waiting.wait(0.05)
        assert waiting.is_set(), f"the second roll-up did not wait on the first one's markers: {results}"
    release_first.set()
    a.join(WAIT)
    b.join(WAIT)
    assert not a.is_alive() and not b.is_alive()
    assert results == {"first": _complete_days(), "second": 0}
    with maker() as s:
        assert s.scalar(select(func.sum(UsageDaily.requests))) == _raw_requests_through(s, through)
        assert s.scalar(select(func.count()).select_from(UsageRollupDay)) == _complete_days()


def test_top_users_merge_today_exactly_with_a_short_ranking(maker, settings, monkeypatch):
    """With rankings cut at 3 users, a user outside the stored past top 3 who uses a lot today
    still comes out first, and every limit gives the raw answer."""
    monkeypatch.setattr(usage_rollup, "TOP_KEEP", 3)
    users = [make_user(maker, settings, username=f"user{i}", academy="CS") for i in range(7)]
    past = [600, 500, 400, 300, 200, 100, 390]
    today = [0, 5, 0, 0, 150, 1000, 20]
    with maker.begin() as s:
        for user, p, t in zip(users, past, today, strict=True):
            s.add(UsageRecord(user_id=user.id, academy="CS", prompt_tokens=p, created_at=_midnight(3)))
            if t:
                s.add(UsageRecord(user_id=user.id, academy="CS", prompt_tokens=t, created_at=datetime.now(UTC)))
        s.add(UsageRecord(user_id=None, admin_name="root", prompt_tokens=10_000, created_at=datetime.now(UTC)))
    with maker.begin() as s:
        dashboard.top_users(s, days=7, limit=2)  # stores the past ranking
    with maker() as s:
        stored = s.scalars(select(UsageTopUsers.ranking)).all()
        assert len(stored) == 1 and stored[0].count("[") == 4  # three users in a JSON list
        for limit in range(1, 9):
            got = [(u["username"], u["tokens"]) for u in dashboard.top_users(s, days=7, limit=limit)]
            expected = sorted(
                ((f"user{i}", p + t) for i, (p, t) in enumerate(zip(past, today, strict=True))),
                key=lambda x: (-x[1], x[0]),
            )[:limit]
            assert got == expected, limit
        assert dashboard.top_users(s, days=7, limit=1)[0]["username"] == "user5"


def test_bulk_load_into_rolled_up_days_is_rolled_up_again(maker, settings):
    users = _usage_dataset(maker, settings)
    with maker.begin() as s:
        dashboard.tokens_per_day(s, days=90)
        assert s.scalar(select(func.count()).select_from(UsageRollupDay)) == _complete_days()
    with maker.begin() as s:  # seed-demo writes rows dated over the last 90 days
        seed_demo(s, settings, users=5, usage=400, seed=3)
    with maker.begin() as s:
        dashboard.tokens_per_day(s, days=91)
    with maker() as s:
        through = usage_rollup.complete_through()
        assert s.scalar(select(func.sum(UsageDaily.requests))) == _raw_requests_through(s, through)
        _assert_charts_match_raw(s, users, windows=(3, 30, 91))


def test_api_sweeper_rolls_up_in_the_background(db_url, tmp_path):
    from fastapi.testclient import TestClient

    from backend.server import create_app
    from db.session import get_sessionmaker

    settings = make_settings(db_url, tmp_path, sweeper_interval_seconds=1)
    maker = get_sessionmaker(db_url)
    _usage_dataset(maker, settings)
    with TestClient(create_app(settings, playground=False)):
        done = threading.Event()
        for _ in range(WAIT * 10):
            with maker() as s:
                rankings = s.scalar(select(func.count()).select_from(UsageTopUsers))
                days = s.scalar(select(func.count()).select_from(UsageRollupDay))
            if days == _complete_days() and rankings == len(_ranked_ranges()):
                done.set()
                break
            done.wait(0.1)
        assert done.is_set(), (days, rankings)


@pytest.mark.parametrize("hour", [0, 13])
def test_a_day_is_complete_only_after_the_settling_margin(hour):
    day = datetime(2026, 3, 10, tzinfo=UTC).date()
    now = datetime(2026, 3, 10, hour, 0, tzinfo=UTC)
    assert usage_rollup.complete_through(now) == day - timedelta(days=2 if hour == 0 else 1)
    assert usage_rollup.complete_through(now + usage_rollup.SETTLE) == day - timedelta(days=1)


def test_rankings_of_past_days_are_dropped_when_a_day_is_rolled_up(maker, settings):
    _usage_dataset(maker, settings)
    through = usage_rollup.complete_through()
    with maker.begin() as s:
        usage_rollup.catch_up(s)
        s.add(UsageTopUsers(from_day=_first_day(), to_day=through - timedelta(days=3), ranking="[]"))
    with maker.begin() as s:  # a new day ends: yesterday is rolled up again from scratch
        usage_rollup.invalidate(s, since=through)
        assert usage_rollup.catch_up(s) == 1
    with maker() as s:
        ranges = set(s.execute(select(UsageTopUsers.from_day, UsageTopUsers.to_day)).all())
        assert ranges == _ranked_ranges()
        assert s.scalar(select(func.sum(UsageDaily.requests))) == _raw_requests_through(s, through)


def test_usage_row_counts_from_the_rollup_equal_the_raw_counts(maker, settings):
    _usage_dataset(maker, settings)
    today = datetime.now(UTC).date()
    cases = [
        {},
        {"academy": "CS"},
        {"academy": "Nowhere"},
        {"date_from": today - timedelta(days=3)},
        {"date_to": today - timedelta(days=2)},
        {"date_from": today - timedelta(days=5), "date_to": today - timedelta(days=1), "academy": "Math"},
        {"date_from": today, "date_to": today},
        {"date_from": today - timedelta(days=1), "date_to": today - timedelta(days=4)},  # empty range
        {"date_from": today - timedelta(days=40), "date_to": today - timedelta(days=30)},  # before any row
    ]

    def raw_count(s, academy=None, date_from=None, date_to=None):
        where = []
        if academy:
            where.append(UsageRecord.academy == academy)
        if date_from:
            where.append(UsageRecord.created_at >= usage_rollup.day_start(date_from))
        if date_to:
            where.append(UsageRecord.created_at < usage_rollup.day_start(date_to + timedelta(days=1)))
        return s.scalar(select(func.count()).select_from(UsageRecord).where(*where))

    with maker() as s:  # nothing rolled up yet: every row is counted raw
        assert [usage_rollup.count_usage(s, **c) for c in cases] == [raw_count(s, **c) for c in cases]
    with maker.begin() as s:
        usage_rollup.ensure_rolled_up(s, through=usage_rollup.complete_through())
    with maker() as s:
        expected = [raw_count(s, **c) for c in cases]
        assert expected[0] > expected[1] > 0 and expected[2] == 0
        assert [usage_rollup.count_usage(s, **c) for c in cases] == expected
        assert browse.count(s, "usage") == expected[0]
        assert browse.count(s, "usage", browse.BrowseFilters(academy="CS")) == expected[1]
        assert browse.count(s, "usage", browse.BrowseFilters(text="m1")) == s.scalar(
            select(func.count()).where(UsageRecord.model.like("%m1%"))
        )
    old = _midnight(4)
    with maker.begin() as s:  # proof the count reads the roll-up: raw rows removed behind its back still count
        removed = s.execute(
            delete(UsageRecord).where(UsageRecord.created_at >= old, UsageRecord.created_at < _midnight(3))
        ).rowcount
    with maker() as s:
        assert removed > 0 and browse.count(s, "usage") == expected[0]
