"""Quota-policy overhead: what the price lookup and the rate-limit check add to a chat.

`python -m bench.policy [--requests N]`. One run, one SQLite database, one fake OpenAI-compatible
upstream on 127.0.0.1 that answers instantly; whole chats through the real gateway
(`gateway.chat`: resolve, reserve, stream, settle, usage row), interleaved round-robin so the
machine's load hits every variant alike:

- before: the price lookup and the rate-limit check replaced by no-ops (the code before them);
- after, no limit: a price row for the model, no rate limit (one primary-key lookup each);
- after, database limit: price row + an rpm/tpm limit counted in the database window;
- after, Redis limit: the same limit counted in Redis (METEOR_TEST_REDIS_URL or
  redis://127.0.0.1:6379/0; skipped when none answers).

Prints p50 / p95 per variant and the p50 difference to "before".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="chats per variant")
    args = parser.parse_args()

    from backend import security
    from backend.accounts import rate_limits
    from backend.accounts import service as accounts
    from backend.billing import pricing, quota
    from backend.chat import gateway
    from backend.chat.gateway import Caller
    from backend.config import Settings
    from db import migrate
    from db.models import ModelAiOnline, ModelInfo
    from db.session import get_sessionmaker
    from tests.fakes.openai_server import OpenAIServer

    redis_url = os.environ.get("METEOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except Exception:
        redis_url = None

    with tempfile.TemporaryDirectory() as tmp, OpenAIServer(reply="ok " * 10, prompt_tokens=12) as upstream:
        url = f"sqlite:///{Path(tmp) / 'meteor.db'}"
        migrate.upgrade(url)
        base = Settings(database_url=url, data_dir=Path(tmp), bcrypt_rounds=4)
        maker = get_sessionmaker(url)
        with maker.begin() as s:
            conn = ModelAiOnline(
                ai_api=upstream.url,
                ai_token_encrypted=security.encrypt_secret(base, "sk-bench"),
                ai_name="bench-conn",
                protocol="openai",
            )
            s.add(conn)
            s.flush()
            model = ModelInfo(model_name="bench", link_type=1, aiol_id=conn.ai_id, ai_name="fake-model")
            s.add(model)
            s.flush()
            pricing.set_model_price(s, model.model_id, prompt=1.5, completion=3, actor="bench")
            users = {}
            for name in ("before", "no_limit", "db_limit", "redis_limit"):
                user = accounts.create_user(s, base, username=f"bench_{name}", password="bench-pass-1", academy="CS")
                quota.grant(s, user_id=user.id, tokens=10**12, actor="bench")
                users[name] = user.id
            for name in ("db_limit", "redis_limit"):
                rate_limits.set_limit(
                    s, scope="user", subject=users[name], rpm=10**6, tpm=10**12, actor="bench"
                )  # fmt: skip
        variants = {
            "before (no lookup, no check)": ("before", base),
            "after, no limit set": ("no_limit", base),
            "after, database limit": ("db_limit", base),
        }
        if redis_url:
            variants["after, Redis limit"] = ("redis_limit", base.model_copy(update={"redis_url": redis_url}))
        real_price, real_admit = pricing.model_price, rate_limits.admit
        loop = asyncio.new_event_loop()  # one loop for every chat: the pooled upstream client is per loop

        def chat(name: str, settings: Settings) -> float:
            bypass = name == "before"
            pricing.model_price = (lambda _s, _m: pricing.UNIT) if bypass else real_price
            rate_limits.admit = (lambda *_a, **_k: None) if bypass else real_admit
            started = time.perf_counter()
            loop.run_until_complete(
                gateway.chat(
                    maker,
                    settings,
                    caller=Caller(user_id=users[name], academy="CS"),
                    dialog=[{"role": "user", "content": "hi"}],
                    model_name="bench",
                    max_tokens=32,
                    record_history=False,
                )
            )
            return (time.perf_counter() - started) * 1000

        timings: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(20):  # warm-up: connections, caches
            for name, settings in variants.values():
                chat(name, settings)
        for _ in range(args.requests):
            for label, (name, settings) in variants.items():
                timings[label].append(chat(name, settings))
        pricing.model_price, rate_limits.admit = real_price, real_admit

        # the two calls alone, inside the reserve transaction they share (no upstream, no noise
        # from the rest of the chat): an empty transaction vs the lookup + check
        def calls(name: str | None, settings: Settings) -> float:
            started = time.perf_counter()
            with maker.begin() as s:
                if name is not None:
                    pricing.model_price(s, model.model_id)
                    rate_limits.admit(s, settings, user_id=users[name], academy="CS", tokens=44)
            return (time.perf_counter() - started) * 1000

        alone: dict[str, list[float]] = {"empty transaction": [], **{label: [] for label in list(variants)[1:]}}
        for _ in range(args.requests * 3):
            alone["empty transaction"].append(calls(None, base))
            for label, (name, settings) in list(variants.items())[1:]:
                alone[label].append(calls(name, settings))

    before = statistics.median(timings["before (no lookup, no check)"])
    print(f"{args.requests} chats per variant, interleaved (ms per whole chat through the gateway)")
    for label, values in timings.items():
        values.sort()
        p50, p95 = statistics.median(values), values[int(len(values) * 0.95) - 1]
        print(f"  {label:30s} p50 {p50:6.2f}  p95 {p95:6.2f}  p50 vs before {p50 - before:+6.2f}")
    empty = statistics.median(alone["empty transaction"])
    print("the price lookup + rate-limit check alone, in one transaction (ms)")
    for label, values in alone.items():
        print(f"  {label:30s} p50 {statistics.median(values):6.3f}  added {statistics.median(values) - empty:+6.3f}")
    if not redis_url:
        print("  (Redis variant skipped: no Redis answered)")


if __name__ == "__main__":
    main()
