"""Academy allowances on a schedule (backend/billing/allowances.py): the two modes, the carry
cap, exactly once per user and period with concurrent runners and after a crash, new users,
the sweeper, the admin API. Every test runs on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import func, select

from backend.billing import allowances, quota
from backend.errors import ServiceError
from db.models import AllowanceGrant, AllowanceRun, AuditLog, QuotaLedger, User
from tests.factories import make_user, super_admin_headers

pytestmark = pytest.mark.committed  # its runs set the isolation level, and several runners race

DEC = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
JAN = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


def new_allowance(maker, **fields) -> int:
    values = dict(name="cs-monthly", academy="CS", tokens=1000, pic_times=0, period="monthly", mode="top_up")
    values.update(fields)
    with maker.begin() as s:
        return allowances.create(s, actor="test", **values).id


def balances(maker, users) -> list[tuple[int, int]]:
    with maker() as s:
        return [(b.tokens, b.pic_times) for b in (quota.balance(s, u.id) for u in users)]


def assert_ledger_matches(maker) -> None:
    with maker() as s:
        for user_id in s.scalars(select(User.id)):
            assert quota.ledger_sum(s, user_id) == quota.balance(s, user_id)


def allowance_rows(maker, allowance_id: int) -> tuple[int, int]:
    """(grant rows, allowance ledger rows) of an allowance, over all periods."""
    with maker() as s:
        grants = s.scalar(
            select(func.count()).select_from(AllowanceGrant).where(AllowanceGrant.allowance_id == allowance_id)
        )
        ledger = s.scalar(
            select(func.count())
            .select_from(QuotaLedger)
            .where(QuotaLedger.kind == "allowance", QuotaLedger.request_id.like(f"allowance:{allowance_id}:%"))
        )
    return grants, ledger


# --- periods (pure) ---------------------------------------------------------------------------


def spec(**fields) -> allowances.Spec:
    values = dict(
        id=1,
        name="x",
        academy=None,
        tokens=1,
        pic_times=0,
        period="monthly",
        mode="add",
        carry_cap_tokens=None,
        carry_cap_pic_times=None,
        terms=(),
        starts_on=None,
        enabled=True,
    )
    values.update(fields)
    return allowances.Spec(**values)


def test_periods_weekly_monthly_and_term():
    weekly = spec(period="weekly")
    p = allowances.current_period(weekly, DEC)  # Wednesday 2 Dec 2026
    assert (p.key, p.start.date(), p.end.date()) == ("2026-W49", date(2026, 11, 30), date(2026, 12, 7))
    assert allowances.next_period(weekly, DEC).key == "2026-W50"
    monthly = spec(period="monthly")
    p = allowances.current_period(monthly, DEC)
    assert (p.key, p.start.date(), p.end.date()) == ("2026-12", date(2026, 12, 1), date(2027, 1, 1))
    assert allowances.next_period(monthly, DEC).start == datetime(2027, 1, 1, tzinfo=UTC)
    terms = allowances.parse_terms([["2027-02-20", "2027-07-10"], ["2026-09-01", "2027-01-31"]])
    term = spec(period="term", terms=terms)
    p = allowances.current_period(term, DEC)
    assert (p.key, p.end.date()) == ("T2026-09-01", date(2027, 2, 1))
    assert allowances.next_period(term, DEC).key == "T2027-02-20"
    assert allowances.current_period(term, datetime(2027, 2, 10, tzinfo=UTC)) is None  # between terms
    assert allowances.next_period(term, datetime(2027, 8, 1, tzinfo=UTC)) is None
    later = spec(period="monthly", starts_on=date(2027, 3, 15))
    assert allowances.current_period(later, DEC) is None
    assert allowances.next_period(later, DEC).key == "2027-03"
    with pytest.raises(ServiceError):
        allowances.parse_terms([["2026-09-01", "2027-01-31"], ["2027-01-01", "2027-03-01"]])  # overlap
    with pytest.raises(ServiceError):
        allowances.parse_terms([["2026-09-01", "2026-08-01"]])


# --- modes and carry cap ----------------------------------------------------------------------


def test_top_up_raises_to_the_amount_and_never_lowers(maker, settings):
    users = [make_user(maker, settings, academy="CS", tokens=t, pic_times=p) for t, p in ((0, 0), (300, 9), (2000, 1))]
    other = make_user(maker, settings, academy="Math", tokens=5)
    aid = new_allowance(maker, tokens=1000, pic_times=5, mode="top_up")
    result = allowances.run_period(maker, aid, now=DEC)
    assert (result.users, result.tokens, result.pic_times, result.completed) == (3, 1000 + 700, 5 + 4, True)
    assert balances(maker, users) == [(1000, 5), (1000, 9), (2000, 5)]
    assert balances(maker, [other]) == [(5, 0)]
    again = allowances.run_period(maker, aid, now=DEC)  # same period: nothing more
    assert again.users == 0
    assert balances(maker, users) == [(1000, 5), (1000, 9), (2000, 5)]
    assert allowance_rows(maker, aid) == (3, 3)
    assert_ledger_matches(maker)


def test_add_adds_each_period_and_all_academies(maker, settings):
    users = [make_user(maker, settings, academy=a, tokens=100) for a in ("CS", "Math", None)]
    aid = new_allowance(maker, academy="", tokens=500, pic_times=2, mode="add")
    assert allowances.run_period(maker, aid, now=DEC).users == 3
    assert balances(maker, users) == [(600, 2)] * 3
    assert allowances.run_period(maker, aid, now=JAN).users == 3  # the next month
    assert balances(maker, users) == [(1100, 4)] * 3
    assert allowance_rows(maker, aid) == (6, 6)
    assert_ledger_matches(maker)


def test_carry_cap_trims_what_is_left_before_granting(maker, settings):
    users = [make_user(maker, settings, tokens=t, pic_times=p) for t, p in ((1000, 10), (150, 1), (0, 0))]
    add = new_allowance(maker, name="add-capped", tokens=500, pic_times=3, mode="add", carry_cap_tokens=200)
    allowances.run_period(maker, add, now=DEC)
    # 1000 → min(1000, 200) + 500; picTimes have no cap
    assert balances(maker, users) == [(700, 13), (650, 4), (500, 3)]
    top = new_allowance(
        maker, name="top-capped", tokens=600, pic_times=0, mode="top_up", carry_cap_tokens=0, carry_cap_pic_times=5
    )
    allowances.run_period(maker, top, now=DEC)
    assert balances(maker, users) == [(600, 5), (600, 4), (600, 3)]  # nothing carries over; picTimes capped at 5
    with maker() as s:
        forfeited = s.scalar(
            select(QuotaLedger.delta_tokens).where(
                QuotaLedger.user_id == users[0].id, QuotaLedger.request_id == f"allowance:{top}:2026-12"
            )
        )
    assert forfeited == -100
    assert_ledger_matches(maker)


def test_disabled_users_and_disabled_allowances_get_nothing(maker, settings):
    active = make_user(maker, settings)
    off = make_user(maker, settings)
    with maker.begin() as s:
        s.get(User, off.id).status = "disabled"
    aid = new_allowance(maker)
    allowances.run_period(maker, aid, now=DEC)
    assert balances(maker, [active, off]) == [(1000, 0), (0, 0)]
    with maker.begin() as s:
        allowances.modify(s, aid, actor="test", enabled=False)
    with pytest.raises(ServiceError) as err:
        allowances.run_period(maker, aid, now=JAN)
    assert err.value.status == 409
    assert allowances.apply_due(maker, now=JAN) == []


# --- exactly once -----------------------------------------------------------------------------


def test_concurrent_runners_grant_each_user_exactly_once(maker, settings):
    users = [make_user(maker, settings, tokens=i) for i in range(60)]
    aid = new_allowance(maker, tokens=100, pic_times=1, mode="add")
    start = threading.Barrier(3)
    results, errors = [], []

    def runner() -> None:
        try:
            start.wait()
            results.append(allowances.run_period(maker, aid, now=DEC, chunk_size=7))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert sum(r.users for r in results) == 60
    assert balances(maker, users) == [(i + 100, 1) for i in range(60)]
    assert allowance_rows(maker, aid) == (60, 60)
    with maker() as s:
        run = s.get(AllowanceRun, (aid, "2026-12"))
        assert (run.users, run.tokens, run.pic_times) == (60, 6000, 60) and run.completed_at is not None
    assert_ledger_matches(maker)


CRASHING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import datetime
    from backend.billing import allowances
    from db.session import get_sessionmaker

    url, allowance_id, now = sys.argv[1], int(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
    chunks = []

    def progress(done, total):
        chunks.append(done)
        print(done, flush=True)
        if len(chunks) == 3:  # killed between chunks: chunk 3 committed, chunk 4 never starts
            os.kill(os.getpid(), signal.SIGKILL)

    allowances.run_period(get_sessionmaker(url), allowance_id, now=now, chunk_size=10, progress=progress)
    """
)


def test_a_run_killed_between_chunks_resumes_without_double_grants(maker, settings):
    users = [make_user(maker, settings, tokens=5) for _ in range(45)]
    aid = new_allowance(maker, tokens=100, mode="add")
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, settings.resolved_database_url, str(aid), DEC.isoformat()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.getcwd(),
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["10", "20", "30"]
    assert allowance_rows(maker, aid) == (30, 30)
    with maker() as s:
        assert s.get(AllowanceRun, (aid, "2026-12")).completed_at is None  # the crashed run never finished
    assert sorted(balances(maker, users)) == sorted([(105, 0)] * 30 + [(5, 0)] * 15)
    resumed = allowances.run_period(maker, aid, now=DEC, chunk_size=10)
    assert (resumed.users, resumed.completed) == (15, True)
    assert balances(maker, users) == [(105, 0)] * 45
    assert allowance_rows(maker, aid) == (45, 45)
    assert_ledger_matches(maker)


def test_a_chunk_that_fails_leaves_nothing_of_itself(maker, settings, monkeypatch):
    users = [make_user(maker, settings, tokens=0) for _ in range(4)]
    aid = new_allowance(maker, tokens=10, mode="add")
    real = allowances.apply_users
    calls = []

    def failing(session, *args, **kwargs):
        got = real(session, *args, **kwargs)  # grant rows, balances and ledger written …
        calls.append(got)
        if len(calls) == 2:
            raise RuntimeError("crash inside the chunk's transaction")  # … then the process dies
        return got

    monkeypatch.setattr(allowances, "apply_users", failing)
    with pytest.raises(RuntimeError):
        allowances.run_period(maker, aid, now=DEC, chunk_size=2)
    assert allowance_rows(maker, aid) == (2, 2)
    assert sorted(balances(maker, users)) == [(0, 0), (0, 0), (10, 0), (10, 0)]
    monkeypatch.setattr(allowances, "apply_users", real)
    assert allowances.run_period(maker, aid, now=DEC, chunk_size=2).users == 2
    assert balances(maker, users) == [(10, 0)] * 4
    assert_ledger_matches(maker)


# --- new users and the sweeper ----------------------------------------------------------------


def test_new_user_of_the_academy_gets_the_current_period_on_register(maker, settings, client):
    aid = new_allowance(maker, academy="CS", tokens=800, pic_times=4)
    r = client.post("/auth/register", json={"username": "newbie", "password": "secret-pw-1", "academy": "CS"})
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    outsider = make_user(maker, settings, academy="Math")
    with maker() as s:
        newbie = s.scalar(select(User).where(User.username == "newbie"))
        assert quota.balance(s, newbie.id) == quota.Balance(800, 4)
        assert quota.balance(s, outsider.id) == quota.Balance(0, 0)
    assert allowances.run_period(maker, aid).users == 0  # the run finds newbie already granted
    assert allowance_rows(maker, aid) == (1, 1)
    assert_ledger_matches(maker)


def test_sweeper_applies_due_allowances_once(maker, settings):
    users = [make_user(maker, settings) for _ in range(3)]
    aid = new_allowance(maker, tokens=50, mode="add")
    first = allowances.apply_due(maker, now=DEC)
    assert [(r.allowance_id, r.users, r.completed) for r in first] == [(aid, 3, True)]
    assert allowances.apply_due(maker, now=DEC) == []  # complete: skipped without scanning users
    assert [r.period_key for r in allowances.apply_due(maker, now=JAN)] == ["2027-01"]
    assert balances(maker, users) == [(100, 0)] * 3
    assert_ledger_matches(maker)


# --- preview, listing, admin API --------------------------------------------------------------


def test_preview_lists_users_and_totals_of_the_next_run(maker, settings):
    for t in (0, 400, 5000):
        make_user(maker, settings, tokens=t)
    aid = new_allowance(maker, tokens=1000, mode="top_up")
    with maker() as s:
        p = allowances.preview(s, aid, now=DEC)
    assert (p.period_key, p.pending, p.users, p.tokens) == ("2026-12", True, 3, 1600)
    allowances.run_period(maker, aid, now=DEC)
    with maker() as s:
        p = allowances.preview(s, aid, now=DEC)
        listed = allowances.listing(s, now=DEC)
    assert (p.period_key, p.pending, p.users, p.tokens) == ("2027-01", False, 3, 0)  # all at or above 1000 now
    assert listed[0]["granted_this_period"] == 3 and listed[0]["next_run"] == "2027-01-01T00:00:00+00:00"


def test_admin_api_creates_previews_runs_and_audits(client, maker, settings):
    headers = super_admin_headers(client, maker, settings)
    users = [make_user(maker, settings, academy="CS") for _ in range(5)]
    r = client.post(
        "/admin/allowances",
        json={
            "name": "cs-term",
            "academy": "CS",
            "tokens": 300,
            "pictimes": 2,
            "period": "term",
            "mode": "add",
            "terms": [["2020-01-01", "2099-12-31"]],
        },
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["code"] == 0, r.text
    aid = r.json()["id"]
    bad = client.post("/admin/allowances", json={"name": "x", "period": "yearly"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "ALLOWANCE_ERROR"
    no_term = client.post("/admin/allowances", json={"name": "y", "period": "term"}, headers=headers)
    assert no_term.status_code == 422 and no_term.json()["code"] == "ALLOWANCE_ERROR"
    p = client.get(f"/admin/allowances/{aid}/preview", headers=headers).json()["data"]
    assert (p["period_key"], p["users"], p["tokens"], p["pic_times"]) == ("T2020-01-01", 5, 1500, 10)
    run = client.post(f"/admin/allowances/{aid}/run", headers=headers).json()
    assert run["code"] == 0 and (run["data"]["users"], run["data"]["completed"]) == (5, True)
    assert balances(maker, users) == [(300, 2)] * 5
    listed = client.get("/admin/allowances", headers=headers).json()["data"]
    assert [(a["name"], a["granted_this_period"]) for a in listed] == [("cs-term", 5)]
    assert client.patch(f"/admin/allowances/{aid}", json={"tokens": 400}, headers=headers).json()["code"] == 0
    assert client.delete(f"/admin/allowances/{aid}", headers=headers).json()["code"] == 0
    assert client.get(f"/admin/allowances/{aid}/preview", headers=headers).status_code == 404
    assert client.get("/admin/allowances").status_code == 401
    with maker() as s:
        actions = list(
            s.scalars(select(AuditLog.action).where(AuditLog.target_type == "allowance").order_by(AuditLog.id))
        )
    assert actions == ["add_allowance", "run_allowance", "modify_allowance", "delete_allowance"]
    assert_ledger_matches(maker)
