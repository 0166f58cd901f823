"""Conversation history at scale: the seed-003 list and detail endpoints with 1,000,000
messages in 50,000 conversations against the same with 10,000 messages in 500.

    python -m bench.history                          # SQLite in a temp dir
    python -m bench.history --db-url postgresql://postgres@127.0.0.1:5432/bench_empty
    python -m bench.history --large 200000           # a quicker run with fewer messages

Both data sets have the same shape (20 messages per conversation, 100 users). The user
being measured owns 50 conversations in both, so the ratio shows what the size of the
tables costs, not what a longer answer costs. Measured in-process through the real ASGI
app (TestClient): user list (page 1 of 20, with total), user list filtered by title and a
date range, conversation detail (20 messages), admin list (page 1 across everyone).
Printed: p50 / p95 in ms for each set and the large/small p50 ratio (near 1 is the goal).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from backend import security
from backend.config import Settings
from backend.server import create_app
from db import migrate
from db.models import Admin, ModelConversation, ModelMessage, User
from db.session import dispose_all, get_sessionmaker

USERS = 100
PER_CONVERSATION = 20
BENCH_USER_CONVERSATIONS = 50
REQUESTS = 300
WARMUP = 20
BATCH = 10_000
SECRET_KEY = "q0o1oPJuBcSz3-yXYXq5tTQW6H5t0VsDDbBD9y0yTUE="


def settings_for(url: str, data_dir: Path) -> Settings:
    return Settings(
        database_url=url,
        data_dir=data_dir,
        jwt_secret="bench-jwt-" + "k" * 40,
        secret_key=SECRET_KEY,
        cookie_key="bench-cookie-" + "c" * 40,
        sweeper_interval_seconds=3600,
    )


def fill(url: str, messages: int) -> tuple[str, int]:
    """Users, conversations and messages; returns the measured user's id and one of their
    conversations."""
    conversations = messages // PER_CONVERSATION
    maker = get_sessionmaker(url)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with maker.begin() as s:
        s.execute(
            insert(User),
            [
                {"id": f"{i:032x}", "username": f"bench{i}", "password_hash": "x", "tokens": 0, "pic_times": 0}
                for i in range(USERS)
            ],
        )
        s.add(Admin(name="bench-admin", password_hash="x", is_super=True))
    bench_user = f"{0:032x}"
    # the measured user owns the first 50 conversations; the rest are spread over the others
    owners = [
        bench_user if c < BENCH_USER_CONVERSATIONS else f"{1 + c % (USERS - 1):032x}" for c in range(conversations)
    ]
    for first in range(0, conversations, BATCH):
        with maker.begin() as s:
            s.execute(
                insert(ModelConversation),
                [
                    {
                        "user_id": owners[c],
                        "title": f"conversation {c} about sorting",
                        "ai_name": "qwen2.5" if c % 2 else "gpt-3.5-turbo",
                        "created_time": start + timedelta(minutes=c),
                    }
                    for c in range(first, min(first + BATCH, conversations))
                ],
            )
    with maker() as s:
        ids = list(s.scalars(select(ModelConversation.id).order_by(ModelConversation.id)))
    rows = []
    for index, conversation_id in enumerate(ids):
        for m in range(PER_CONVERSATION):
            rows.append(
                {
                    "conversation_id": conversation_id,
                    "role": "user" if m % 2 == 0 else "assistant",
                    "content": f"message {m} of conversation {index}: " + "lorem ipsum " * 5,
                    "prompt_tokens": 10,
                    "completion_tokens": 20,
                    "created_time": start + timedelta(minutes=index, seconds=m),
                }
            )
            if len(rows) >= BATCH:
                with maker.begin() as s:
                    s.execute(insert(ModelMessage), rows)
                rows = []
    if rows:
        with maker.begin() as s:
            s.execute(insert(ModelMessage), rows)
    return bench_user, ids[0]


def prepare(url: str, data_dir: Path, messages: int) -> tuple[TestClient, dict[str, tuple[str, dict, dict | None]]]:
    """Fill one database and return a client on it with the requests to time."""
    migrate.upgrade(url)
    t0 = time.perf_counter()
    user_id, conversation_id = fill(url, messages)
    elapsed = time.perf_counter() - t0
    print(f"  filled {messages:,} messages in {messages // PER_CONVERSATION:,} conversations in {elapsed:.1f} s")
    settings = settings_for(url, data_dir)
    hour = timedelta(hours=1)
    user_token = security.issue_token(settings, subject=user_id, role="user", kind="access", version=0, ttl=hour)
    with get_sessionmaker(url)() as s:
        admin_id = s.scalar(select(Admin.id))
    admin_token = security.issue_token(
        settings, subject=str(admin_id), role="admin", kind="access", version=0, ttl=hour
    )
    user = {"Authorization": f"Bearer {user_token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    page = {"pageNum": 1, "pageSize": 20}
    filtered = page | {"title": "sorting", "createdTimeStart": "2024/01/01 00:10", "createdTimeEnd": "2024/01/01 00:40"}
    requests = {
        "user list (page 1/20)": ("/model/message/list", user, page),
        "user list, title + dates": ("/model/message/list", user, filtered),
        "detail (20 messages)": (f"/model/message/detail/{conversation_id}", user, None),
        "admin list (page 1/20)": ("/model/message/list", admin, page),
    }
    return TestClient(create_app(settings, playground=False)), requests


def _once(client: TestClient, path: str, headers: dict, params: dict | None) -> float:
    t0 = time.perf_counter()
    r = client.get(path, headers=headers, params=params)
    elapsed = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200, r.text
    return elapsed


def p50_p95(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="messages in the baseline set")
    parser.add_argument("--large", type=int, default=1_000_000, help="messages in the large set")
    parser.add_argument("--db-url", help="a server database URL prefix; <url>_small and <url>_large must be empty")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = {}
        for label, messages in (("small", args.small), ("large", args.large)):
            url = f"{args.db_url}_{label}" if args.db_url else f"sqlite:///{tmp_path / label}.db"
            print(f"{label}: {messages:,} messages")
            sets[label] = prepare(url, tmp_path, messages)
        # small and large requests alternate, so a busy machine slows both alike
        results: dict[str, dict[str, tuple[float, float]]] = {"small": {}, "large": {}}
        for name in sets["small"][1]:
            samples: dict[str, list[float]] = {"small": [], "large": []}
            for i in range(WARMUP + REQUESTS):
                for label, (client, requests) in sets.items():
                    elapsed = _once(client, *requests[name])
                    if i >= WARMUP:
                        samples[label].append(elapsed)
            for label in sets:
                results[label][name] = p50_p95(samples[label])
        for client, _ in sets.values():
            client.close()
        dispose_all()
    print()
    print(f"{'endpoint':28} {'small p50':>10} {'p95':>8} {'large p50':>10} {'p95':>8} {'ratio':>7}")
    for name, (small_p50, small_p95) in results["small"].items():
        large_p50, large_p95 = results["large"][name]
        ratio = large_p50 / small_p50
        print(f"{name:28} {small_p50:9.2f}ms {small_p95:7.2f}ms {large_p50:9.2f}ms {large_p95:7.2f}ms {ratio:6.2f}x")


if __name__ == "__main__":
    main()
