"""Group commit against a transaction each: the gateway's two writes under a lecture hall.

    .venv/bin/python -m bench.group_commit [--tasks 200] [--chats 2000]

In one process and one event loop, `--tasks` concurrent tasks each run chats of two writes —
reserve, then settle — until `--chats` are done, first with one transaction per write in the
gateway's database threads (how the gateway wrote until group commit), then through
`db.group_commit` (how it writes now), alternately, twice each. Prints writes/s, the p50 / p99
of one write as its caller waits for it, and the ratio against the per-transaction run of the
same round. SQLite always; PostgreSQL when METEOR_BENCH_POSTGRES_URL or METEOR_TEST_POSTGRES_URL
is set. No upstream, no HTTP: only the database path.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.to_thread
import uvloop
from sqlalchemy import select

from backend.billing import quota
from backend.chat.gateway import DB_THREADS
from bench.gateway import pct, postgres_database, prepare_meteor
from db import group_commit
from db.models import User
from db.session import get_sessionmaker


def reserve(user_id: str):
    def job(s):
        return quota.reserve(s, user_id=user_id, tokens=100, ttl=timedelta(minutes=5), model="bench")

    return job


def settle(reservation_id: str):
    def job(s):
        return quota.settle(s, reservation_id=reservation_id, tokens=40, prompt_tokens=10, completion_tokens=30)

    return job


async def run(maker, user_id: str, tasks: int, chats: int, grouped: bool) -> tuple[float, list[float]]:
    limiter = anyio.CapacityLimiter(DB_THREADS)  # as many as the gateway had
    waits: list[float] = []
    left = iter(range(chats))

    async def write(job):
        t0 = time.perf_counter()
        if grouped:
            result = await group_commit.write(maker, job)
        else:

            def alone():
                with maker.begin() as s:
                    return job(s)

            result = await anyio.to_thread.run_sync(alone, limiter=limiter)
        waits.append(time.perf_counter() - t0)
        return result

    async def worker() -> None:
        for _ in left:
            reservation = await write(reserve(user_id))
            await write(settle(reservation))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return 2 * chats / (time.perf_counter() - t0), waits


def bench(name: str, url: str, data_dir: Path, tasks: int, chats: int) -> None:
    prepare_meteor(data_dir, url, "http://127.0.0.1:9/v1")
    maker = get_sessionmaker(url)
    with maker() as s:
        user_id = s.scalar(select(User.id).where(User.username == "bench"))
    print(f"\n{name}: {tasks} concurrent tasks, {chats} chats (2 writes each) per run\n")
    print("| round | writes | writes/s | wait ms p50 / p99 | × a transaction each |")
    print("|---|---|---|---|---|")
    for round_ in (1, 2):
        base = None
        for grouped in (False, True):
            rate, waits = uvloop.run(run(maker, user_id, tasks, chats, grouped))
            base = base or rate
            label = "group commit" if grouped else "a transaction each"
            wait = f"{pct(waits, 50):.2f} / {pct(waits, 99):.2f}"
            print(f"| {round_} | {label} | {rate:.0f} | {wait} | {rate / base:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--chats", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meteor-group-commit-"))
    bench("SQLite", f"sqlite:///{tmp / 'sqlite' / 'meteor.db'}", tmp / "sqlite", args.tasks, args.chats)
    pg = postgres_database()
    if pg is None:
        print("\nPostgreSQL skipped: set METEOR_BENCH_POSTGRES_URL or METEOR_TEST_POSTGRES_URL")
        return
    url, drop = pg
    try:
        bench("PostgreSQL", url, tmp / "pg", args.tasks, args.chats)
    finally:
        drop()


if __name__ == "__main__":
    main()
