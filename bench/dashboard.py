"""Dashboard bench: time to render the Tables, Overview and Usage pages (streamlit AppTest, the
real Home.py and pages) on 10,000 against 1,000,000 usage rows spread over the last 90 days,
both with 100,000 users, printed as ratios. A page that filtered, paged or aggregated in
Python would scale with the rows (ratio near 100); SQL paging stays flat, and the usage
charts read the daily roll-up (backend/services/usage_rollup.py) for complete days and the
raw rows only for today.

`make bench-dashboard` (python -m bench.dashboard [--users N] [--small N] [--large N] [--days N]).
Each database is a fresh SQLite file in a temporary directory; rows go in with bulk
multi-row inserts (backend.services.demo). Figures:
- first Overview: the sign-in run that lands on the Overview right after the bulk load; it
  rolls up every past day and ranks the window's users once (in production the API's
  sweeper does this in the background);
- steady-state pages: cold renders, the read caches cleared before each, so each one runs
  its queries — what a page costs every day;
- daily upkeep: what the sweeper does once a day (roll up the day that just ended and rank
  the users of the dashboard's windows).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench_root"
PASSWORD = "bench-password-1"
REPEAT = 3


def build_database(directory: Path, *, users: int, usage: int, days: int) -> str:
    from backend.config import Settings
    from backend.services import accounts
    from backend.services.demo import seed_demo
    from db import migrate
    from db.session import get_sessionmaker

    url = f"sqlite:///{directory / 'meteor.db'}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, data_dir=directory, bcrypt_rounds=4)
    started = time.perf_counter()
    with get_sessionmaker(url).begin() as session:
        seed_demo(session, settings, users=users, usage=usage, days=days, seed=42)
        accounts.create_admin(session, settings, name=ADMIN, password=PASSWORD, is_super=True, actor=None)
    print(f"  {usage:>9,} usage rows, {users:,} users inserted in {time.perf_counter() - started:5.1f} s", flush=True)
    return url


def point_dashboard_at(directory: Path, url: str) -> None:
    os.environ.update(
        {
            "METEOR_DATABASE_URL": url,
            "METEOR_DATA_DIR": str(directory),
            "METEOR_BCRYPT_ROUNDS": "4",
            "METEOR_LANGUAGE": "en",
        }
    )


def steady_state_navigation() -> None:
    """AppTest restarts Streamlit's page discovery on every run; a server decides once (see
    tests/dashboard/apptest.py). Run every render the way a warmed-up server does."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init


def signed_in():
    """Sign in as the bench admin; returns the AppTest and the time of the run that signs in
    and renders the Overview (the first one on this database)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "Home.py"), default_timeout=600).run()
    at.radio(key="meteor_login_kind").set_value("admin").run()
    at.text_input[0].input(ADMIN)
    at.text_input[1].input(PASSWORD)
    started = time.perf_counter()
    next(b for b in at.button if b.label == "Sign in").click().run()
    first = time.perf_counter() - started
    assert not at.exception and [t.value for t in at.title] == ["Overview"], at.exception
    return at, first


def daily_upkeep(url: str) -> float:
    """Wall time of the sweeper's work when a day ends: forget the roll-up of yesterday (and
    the rankings), then catch up (one day rolled up, one ranking per dashboard window)."""
    from backend.services import usage_rollup
    from db.session import get_sessionmaker

    maker = get_sessionmaker(url)
    with maker.begin() as session:
        usage_rollup.invalidate(session, since=usage_rollup.complete_through())
    started = time.perf_counter()
    with maker.begin() as session:
        rolled = usage_rollup.catch_up(session)
    assert rolled == 1, rolled
    return time.perf_counter() - started


def rows_today(url: str) -> int:
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from backend.services import usage_rollup
    from db.models import UsageRecord
    from db.session import get_sessionmaker

    since = usage_rollup.day_start(datetime.now(UTC).date())
    with get_sessionmaker(url)() as session:
        return int(session.scalar(select(func.count()).where(UsageRecord.created_at >= since)))


def timed_render(at, page: str, table: str | None = None) -> float:
    """Median wall time of a cold render of `page` (read caches cleared first)."""
    import streamlit as st

    at.switch_page(f"pages/{page}.py").run()
    if table:
        at.selectbox(key="tables_table").set_value(table).run()
    at.run()  # warm-up: imports and first-render costs are not what is measured
    samples = []
    for _ in range(REPEAT):
        st.cache_data.clear()
        started = time.perf_counter()
        at.run()
        samples.append(time.perf_counter() - started)
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
    return statistics.median(samples)


def measure(users: int, usage: int, days: int) -> dict[str, float]:
    from db.session import dispose_all

    with tempfile.TemporaryDirectory(prefix="meteor-bench-") as tmp:
        directory = Path(tmp)
        url = build_database(directory, users=users, usage=usage, days=days)
        point_dashboard_at(directory, url)
        today = rows_today(url)
        print(f"  {today:>9,} of them today (read raw; the other days come from the roll-up)", flush=True)
        at, first = signed_in()
        times = {
            "Overview, first (rolls up)": first,
            "Overview": timed_render(at, "overview"),
            "Tables: users": timed_render(at, "tables", "users"),
            "Tables: usage": timed_render(at, "tables", "usage"),
            "Usage & audit": timed_render(at, "usage"),
            "daily upkeep (sweeper)": daily_upkeep(url),
        }
        dispose_all()
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="days the usage rows are spread over")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from streamlit import logger as streamlit_logger

    streamlit_logger.set_log_level(logging.ERROR)  # bare-mode cache warnings outside a server
    steady_state_navigation()

    print(
        f"dashboard bench: {args.users:,} users; {args.small:,} vs {args.large:,} usage rows over {args.days} days"
        " (SQLite)",
        flush=True,
    )
    small = measure(args.users, args.small, args.days)
    large = measure(args.users, args.large, args.days)
    print(f"\n{'page (cold renders: median of 3)':34} {args.small:>10,} rows {args.large:>10,} rows   ratio")
    for name in small:
        ratio = large[name] / small[name]
        print(f"{name:34} {small[name] * 1000:11.0f} ms {large[name] * 1000:11.0f} ms {ratio:7.1f}x")
    print(f"(rows grew {args.large / args.small:.0f}x)")


if __name__ == "__main__":
    main()
