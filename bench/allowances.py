"""Allowance bench: one academy allowance applied to 100,000 users, set-based and chunked
(backend/billing/allowances.py), timed on a fresh database.

`python -m bench.allowances [--users N] [--chunk N] [--server URL]` (default: a SQLite file in
a temporary directory; with a PostgreSQL / MariaDB server URL a fresh database is created on
it for the run and dropped afterwards). Figures: the preview (users and totals, one aggregate
query), the run (every user: grant row, balance update and ledger row, in chunks of --chunk users, each its own
transaction), a second run of the same period (grants nothing), and the sweeper's check
once the period is complete. Afterwards it checks that every user got exactly one grant and
that the balances equal the ledger.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


def seed_users(url: str, users: int) -> None:
    from sqlalchemy import insert

    from db.models import User
    from db.session import get_sessionmaker

    now = datetime.now(UTC)
    maker = get_sessionmaker(url)
    batch = 5000
    for start in range(0, users, batch):
        rows = [
            {
                "id": uuid.uuid4().hex,
                "username": f"bench_{i:07d}",
                "password_hash": "x" * 60,
                "academy": "CS" if i % 10 else "Math",  # 90 % in the allowance's academy
                "tokens": (i * 37) % 3000,
                "pic_times": i % 7,
                "status": "active",
                "token_version": 0,
                "created_at": now,
            }
            for i in range(start, min(start + batch, users))
        ]
        with maker.begin() as s:
            s.execute(insert(User), rows)


@contextmanager
def scratch_database(server: str | None, directory: Path) -> Iterator[str]:
    """A SQLite file, or a fresh database on `server` (dropped at the end)."""
    if server is None:
        yield f"sqlite:///{directory / 'meteor.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db.session import dispose_all, normalize_url

    base = make_url(normalize_url(server))
    name = f"meteor_bench_allowances_{os.getpid()}"
    quote = '"' if base.get_backend_name() == "postgresql" else "`"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--server", default=None, help="PostgreSQL or MariaDB server URL")
    args = parser.parse_args()

    from sqlalchemy import func, select

    from backend.billing import allowances
    from db import migrate
    from db.models import AllowanceGrant, QuotaLedger, User
    from db.session import get_sessionmaker

    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.server, Path(tmp)) as url:
        migrate.upgrade(url)
        maker = get_sessionmaker(url)
        started = time.perf_counter()
        seed_users(url, args.users)
        if args.server:  # what autovacuum / InnoDB do soon after a bulk load: planner statistics
            from sqlalchemy import text

            with maker.begin() as s:
                s.execute(text("ANALYZE users" if url.startswith("postgresql") else "ANALYZE TABLE users"))
        print(
            f"{args.users:,} users inserted in {time.perf_counter() - started:.1f} s ({maker.kw['bind'].dialect.name})"
        )
        with maker.begin() as s:
            aid = allowances.create(
                s, actor="bench", name="cs-monthly", academy="CS", tokens=1000, pic_times=5, mode="top_up",
                period="monthly", carry_cap_tokens=2000,
            ).id  # fmt: skip

        t0 = time.perf_counter()
        with maker() as s:
            preview = allowances.preview(s, aid)
        t_preview = time.perf_counter() - t0

        chunks = []
        t0 = time.perf_counter()
        result = allowances.run_period(maker, aid, chunk_size=args.chunk, progress=lambda d, t: chunks.append(d))
        t_run = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = allowances.run_period(maker, aid, chunk_size=args.chunk)
        t_again = time.perf_counter() - t0

        t0 = time.perf_counter()
        due = allowances.apply_due(maker)
        t_due = time.perf_counter() - t0

        with maker() as s:
            grants = s.scalar(select(func.count()).select_from(AllowanceGrant))
            distinct = s.scalar(select(func.count(func.distinct(AllowanceGrant.user_id))))
            balance = s.execute(select(func.sum(User.tokens), func.sum(User.pic_times))).one()
            seeded = sum((i * 37) % 3000 for i in range(args.users)), sum(i % 7 for i in range(args.users))
            ledger = s.execute(select(func.sum(QuotaLedger.delta_tokens), func.sum(QuotaLedger.delta_pic_times))).one()
        assert grants == distinct == result.users == preview.users, (grants, distinct, result.users, preview.users)
        assert (int(balance[0]) - seeded[0], int(balance[1]) - seeded[1]) == (int(ledger[0]), int(ledger[1]))
        assert again.users == 0 and due == [] and result.completed

        print(f"preview:            {t_preview * 1000:8.0f} ms  ({preview.users:,} users, {preview.tokens:,} tokens)")
        print(
            f"run:                {t_run:8.2f} s   ({result.users:,} users in {result.chunks} chunks of "
            f"{args.chunk}, {result.users / t_run:,.0f} users/s)"
        )
        print(f"same period again:  {t_again * 1000:8.0f} ms  (0 granted)")
        print(f"sweeper when done:  {t_due * 1000:8.1f} ms")
        print("checks: one grant per user, balances == ledger: ok")


if __name__ == "__main__":
    main()
