"""Demo data: users across academies, vouchers and usage records, inserted in bulk.

Used by `python -m backend seed-demo` and by the dashboard bench. Rows go in with
multi-row executemany inserts in chunks (a million usage rows take seconds, not minutes).
Balances keep the house rule: each user's starting balance has its matching `grant`
ledger row. Every demo user shares one password (hashed once), printed in the summary.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend import security
from backend.config import Settings
from backend.reporting import rollup as usage_rollup
from db.models import QuotaLedger, UsageRecord, User, Voucher

ACADEMIES = (
    "计算机学院",
    "数学学院",
    "物理学院",
    "化学学院",
    "生命科学学院",
    "外国语学院",
    "经济管理学院",
    "艺术学院",
)
MODELS = ("SmolLM2", "qwen2.5-7b", "deepseek-chat", "glm-4", "gpt-4o-mini", "whisper", "rapidocr")
PROVIDERS = ("embedded", "openai", "ollama")
DEMO_PASSWORD = "meteor-demo-1"
CHUNK = 10_000


def _chunks(total: int, size: int = CHUNK):
    for start in range(0, total, size):
        yield start, min(size, total - start)


def seed_demo(
    session: Session,
    settings: Settings,
    *,
    users: int,
    usage: int,
    days: int = 90,
    vouchers_per_academy: int = 3,
    seed: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> str:
    """Insert `users` users (with their grant ledger rows), a few vouchers per academy and
    `usage` usage records spread over the last `days` days, in the caller's transaction.
    Returns a one-line summary."""
    if users < 1 or usage < 0:
        raise ValueError("seed-demo needs at least one user and a non-negative usage count")
    rng = random.Random(seed)
    tag = secrets.token_hex(3)
    now = datetime.now(UTC)
    password_hash = security.hash_password(DEMO_PASSWORD, settings.bcrypt_rounds)
    user_table, ledger_table = User.__table__, QuotaLedger.__table__
    ids: list[str] = []
    academies: list[str] = []
    for start, size in _chunks(users):
        rows, ledger = [], []
        for i in range(start, start + size):
            user_id = uuid.uuid4().hex
            academy = ACADEMIES[i % len(ACADEMIES)]
            tokens, pic_times = rng.randrange(0, 200_000, 100), rng.randrange(0, 200)
            created = now - timedelta(days=rng.uniform(0, days * 2))
            rows.append(
                {
                    "id": user_id,
                    "username": f"demo_{tag}_{i:06d}",
                    "password_hash": password_hash,
                    "email": f"demo_{tag}_{i:06d}@example.edu",
                    "academy": academy,
                    "tokens": tokens,
                    "pic_times": pic_times,
                    "status": "active" if rng.random() > 0.02 else "disabled",
                    "token_version": 0,
                    "identity": uuid.uuid4().hex,
                    "created_at": created,
                }
            )
            ledger.append(
                {
                    "user_id": user_id,
                    "kind": "grant",
                    "delta_tokens": tokens,
                    "delta_pic_times": pic_times,
                    "actor": "seed-demo",
                    "note": "demo starting balance",
                    "created_at": created,
                }
            )
            ids.append(user_id)
            academies.append(academy)
        session.execute(insert(user_table), rows)
        session.execute(insert(ledger_table), ledger)
        if progress:
            progress("users", start + size, users)

    voucher_rows = [
        {
            "id": secrets.token_hex(16),
            "name": f"demo-{tag}-{a}-{n + 1}",
            "tokens": 10_000 * (n + 1),
            "pic_times": 10 * (n + 1),
            "academy": academy,
            "available": True,
            "expires_at": now + timedelta(days=30 * (n + 1)),
            "max_redemptions": None,
            "redeemed_count": 0,
            "created_by": "seed-demo",
            "created_at": now,
        }
        for a, academy in enumerate(ACADEMIES)
        for n in range(vouchers_per_academy)
    ]
    session.execute(insert(Voucher.__table__), voucher_rows)

    usage_table = UsageRecord.__table__
    span = days * 86400
    oldest = now - timedelta(seconds=span)
    for start, size in _chunks(usage):
        rows = []
        for i in range(start, start + size):
            who = rng.randrange(len(ids))
            model = MODELS[min(int(rng.expovariate(0.6)), len(MODELS) - 1)]
            kind = "voice" if model == "whisper" else "picture" if model == "rapidocr" else "chat"
            latency = int(rng.lognormvariate(6.5, 0.6))
            roll = rng.random()
            rows.append(
                {
                    "request_id": f"demo-{tag}-{i:09d}",
                    "user_id": ids[who],
                    "academy": academies[who],
                    "kind": kind,
                    "model": model,
                    "provider": PROVIDERS[MODELS.index(model) % len(PROVIDERS)],
                    "prompt_tokens": rng.randrange(5, 800),
                    "completion_tokens": rng.randrange(0, 600),
                    "audio_seconds": round(rng.uniform(1, 60), 1) if kind == "voice" else None,
                    "latency_ms": latency,
                    "ttft_ms": int(latency * rng.uniform(0.1, 0.4)) if kind == "chat" else None,
                    "status": "ok" if roll > 0.04 else ("error" if roll > 0.01 else "cancelled"),
                    "error": "upstream timeout" if 0.01 < roll <= 0.04 else None,
                    # appended in time order, as a live system writes them
                    "created_at": oldest + timedelta(seconds=span * (i + rng.random()) / max(usage, 1)),
                }
            )
        session.execute(insert(usage_table), rows)
        if progress:
            progress("usage", start + size, usage)
    if usage:
        usage_rollup.invalidate(session, since=oldest.date())  # rows went into days that may be rolled up
    return (
        f"seeded {users} demo users in {len(ACADEMIES)} academies (password {DEMO_PASSWORD!r}, names demo_{tag}_*), "
        f"{len(voucher_rows)} vouchers and {usage} usage records over the last {days} days"
    )
