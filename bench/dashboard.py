"""Dashboard bench: time to render the Tables, Overview and Usage pages (streamlit AppTest, the
real Home.py and pages) on 10,000 against 1,000,000 usage rows spread over the last 90 days,
both with 100,000 users, printed as ratios. A page that filtered, paged or aggregated in
Python would scale with the rows (ratio near 100); SQL paging stays flat, and the usage
charts read the daily roll-up (backend/reporting/rollup.py) for complete days and the
raw rows only for today.

`make bench-dashboard` (python -m bench.dashboard [--users N] [--small N] [--large N] [--days N]).
`python -m bench.dashboard --first-paint [--before REV] [--loads N]` times the sign-in form's
first paint in Debian's chromium instead (see `first_paint`).
Each database is a fresh SQLite file in a temporary directory; rows go in with bulk
multi-row inserts (backend.reporting.demo). Figures:
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
    from backend.accounts import service as accounts
    from backend.config import Settings
    from backend.reporting.demo import seed_demo
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
    from backend.reporting import rollup as usage_rollup
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

    from backend.reporting import rollup as usage_rollup
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


# --- first paint: a fresh browser until the sign-in form is on the screen -------------------

BEFORE_REV = "7131d68916e828bcac28571c3f71382f00823f54"  # the dashboard before the first-paint work
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PAINT_TIMEOUT = 120_000  # ms
# Stand-in for Streamlit itself: the same widgets as the sign-in form, nothing of Meteor.
BASELINE_APP = """import streamlit as st
st.title("Meteor AI Cloud")
with st.form("login"):
    st.text_input("Username")
    st.text_input("Password", type="password")
    st.form_submit_button("Sign in")
"""
# Records every set of sidebar-navigation links the page ever shows (a flash of the pages/
# file list would show up here even if it lasts one frame).
NAV_WATCH = """
window.__navSeen = [];
new MutationObserver(() => {
  const links = [...document.querySelectorAll('[data-testid="stSidebarNav"] a')].map(a => a.innerText.trim());
  const last = window.__navSeen[window.__navSeen.length - 1];
  if (links.length && JSON.stringify(links) !== JSON.stringify(last)) window.__navSeen.push(links);
}).observe(document, {subtree: true, childList: true});
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(cwd: Path, script: str, env: dict[str, str]):
    import subprocess

    import httpx

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            script,
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code == 200:
                return process, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"streamlit in {cwd} did not become healthy")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paint_once(browser, url: str) -> tuple[float, float, int, list[list[str]]]:
    """A new browser context (no cookie, no cache): seconds from navigation to a visible
    username box, the page's main-thread busy time until then (chromium's TaskDuration,
    which a loaded machine inflates far less than the wall time), the script and style files
    fetched until then, and the sidebar links seen until the run has finished."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.add_init_script(NAV_WATCH)
        started = time.perf_counter()
        page.goto(url, wait_until="commit", timeout=PAINT_TIMEOUT)
        page.get_by_label("Username").wait_for(state="visible", timeout=PAINT_TIMEOUT)
        painted = time.perf_counter() - started
        busy = next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")
        files = page.evaluate(
            "performance.getEntriesByType('resource').filter(r => /[.](js|css)$/.test(new URL(r.name).pathname)).length"
        )
        page.wait_for_timeout(300)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=PAINT_TIMEOUT)
        page.wait_for_timeout(700)  # the cookie component's rerun, if any
        return painted, busy, files, page.evaluate("window.__navSeen")
    finally:
        context.close()


def first_paint(before: str, loads: int) -> None:
    """Three dashboards, one after the other on the same database and browser: a bare
    Streamlit script with the same form (the floor: Streamlit and chromium themselves), the
    dashboard at `before`, and this working tree. For each: the first load after the server
    started (the process's first run also imports everything) and the median of `loads`
    loads in fresh browser contexts against the warm server."""
    import subprocess

    from playwright.sync_api import sync_playwright

    from backend.accounts import service as accounts
    from backend.config import Settings
    from db import migrate
    from db.session import dispose_all, get_sessionmaker

    with tempfile.TemporaryDirectory(prefix="meteor-paint-") as tmp:
        directory = Path(tmp)
        url = f"sqlite:///{directory / 'meteor.db'}"
        migrate.upgrade(url)
        with get_sessionmaker(url).begin() as session:
            settings = Settings(database_url=url, data_dir=directory, bcrypt_rounds=4)
            accounts.create_admin(session, settings, name=ADMIN, password=PASSWORD, is_super=True, actor=None)
        dispose_all()
        env = {k: v for k, v in os.environ.items() if not k.startswith("METEOR_")}
        env.update(
            METEOR_DATABASE_URL=url, METEOR_DATA_DIR=str(directory), METEOR_BCRYPT_ROUNDS="4", METEOR_LANGUAGE="en"
        )
        baseline = directory / "baseline"
        baseline.mkdir()
        (baseline / "app.py").write_text(BASELINE_APP)
        old = directory / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        variants = [
            ("bare Streamlit form (baseline)", baseline, "app.py"),
            (f"dashboard before ({before[:9]})", old, "Home.py"),
            ("dashboard now (this tree)", ROOT, "Home.py"),
        ]
        results = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for name, cwd, script in variants:
                    process, address = start_streamlit(cwd, script, env)
                    try:
                        first, _busy, _files, seen = paint_once(browser, address)
                        flashes = [seen] if seen else []
                        samples, busy, files = [], [], []
                        cpu = cpu_seconds(process.pid)
                        for _ in range(loads):
                            painted, task, fetched, seen = paint_once(browser, address)
                            samples.append(painted)
                            busy.append(task)
                            files.append(fetched)
                            if seen:
                                flashes.append(seen)
                        server = (cpu_seconds(process.pid) - cpu) / loads
                    finally:
                        process.terminate()
                        process.wait(timeout=15)
                    results.append(
                        (
                            name,
                            first,
                            statistics.median(samples),
                            max(samples),
                            statistics.median(busy),
                            statistics.median(files),
                            server,
                            flashes,
                        )
                    )
                    print(f"  {name}: done", flush=True)
            finally:
                browser.close()
    print(
        f"\n{'fresh browser → sign-in form visible':34} {'1st load':>8} {'median':>7} {'worst':>7}"
        f" {'page busy':>9} {'files':>5} {'server CPU':>10}  sidebar links seen"
    )
    for name, first, median, worst, busy, files, server, flashes in results:
        seen = f"{len(flashes)} loads: " + " → ".join(", ".join(links) for links in flashes[0]) if flashes else "none"
        print(f"{name:34} {first:7.2f}s {median:6.2f}s {worst:6.2f}s {busy:8.2f}s {files:5.0f} {server:9.2f}s  {seen}")
    floor = results[0]
    print(f"(medians of {loads} loads in fresh browser contexts against a warm server; '1st load' is the")
    print(" server's first run; 'page busy': chromium main-thread task time until the form shows; 'files': scripts")
    print(" and styles fetched by then; 'server CPU': the Streamlit process per load, reruns included)")
    for name, _first, median, _worst, busy, *_ in results[1:]:
        print(f" {name}: {median / floor[2]:.1f}x the bare form's wall time, {busy / floor[4]:.1f}x its busy time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="days the usage rows are spread over")
    parser.add_argument("--first-paint", action="store_true", help="time the sign-in form's first paint instead")
    parser.add_argument("--before", default=BEFORE_REV, help="the git revision to compare the first paint with")
    parser.add_argument("--loads", type=int, default=5, help="fresh-browser loads per dashboard (first paint)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.first_paint:
        first_paint(args.before, args.loads)
        return
    from streamlit import logger as streamlit_logger

    streamlit_logger.set_log_level(logging.ERROR)  # bare-mode cache warnings outside a server

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
