"""Failover overhead: what running a model over its routes adds to a chat.

`python -m bench.failover [--requests N]`. One run, one SQLite database, fake OpenAI-compatible
upstreams on 127.0.0.1 that answer at once; whole chats through the real gateway
(`gateway.chat`: plan, reserve, stream, settle, usage row) in one event loop, the variants
interleaved round-robin so the machine's load hits them alike:

- own connection: a model without routes (the path as before failover was wired);
- one route: the same upstream as the model's only route (the routes read when planning,
  the failover wrapper, one health write beside the stream);
- failing first: two routes, the higher priority one answering HTTP 500 every time (one
  failed try, its health write, then the healthy one; the failure threshold is set out of
  reach so it never cools down).

Prints p50 / p95 per variant and the p50 difference to "own connection".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="chats per variant")
    args = parser.parse_args()

    from backend import security
    from backend.accounts import service as accounts
    from backend.billing import quota
    from backend.catalog import routing
    from backend.chat import gateway
    from backend.chat.gateway import Caller
    from backend.config import Settings
    from db import migrate
    from db.models import ModelAiOnline, ModelInfo
    from db.session import get_sessionmaker
    from tests.fakes.openai_server import OpenAIServer

    with (
        tempfile.TemporaryDirectory() as tmp,
        OpenAIServer(reply="ok " * 10, prompt_tokens=12) as healthy,
        OpenAIServer(fail_status=500) as failing,
    ):
        url = f"sqlite:///{Path(tmp) / 'meteor.db'}"
        migrate.upgrade(url)
        settings = Settings(
            database_url=url, data_dir=Path(tmp), bcrypt_rounds=4, connection_failure_threshold=10**9
        )  # fmt: skip
        maker = get_sessionmaker(url)
        with maker.begin() as s:
            conns = {}
            for name, upstream in (("healthy", healthy), ("failing", failing)):
                conns[name] = ModelAiOnline(
                    ai_api=upstream.url,
                    ai_token_encrypted=security.encrypt_secret(settings, "sk-bench"),
                    ai_name=f"bench-{name}",
                    protocol="openai",
                )
                s.add(conns[name])
            s.flush()
            models = {}
            for name in ("own", "one_route", "failing_first"):
                models[name] = ModelInfo(
                    model_name=name, link_type=1, aiol_id=conns["healthy"].ai_id, ai_name="fake-model"
                )  # fmt: skip
                s.add(models[name])
            s.flush()
            routing.set_route(s, model_id=models["one_route"].model_id, connection_id=conns["healthy"].ai_id, actor="b")
            for name, priority in (("failing", 10), ("healthy", 0)):
                routing.set_route(
                    s, model_id=models["failing_first"].model_id, connection_id=conns[name].ai_id, priority=priority,
                    actor="bench",
                )  # fmt: skip
            user = accounts.create_user(s, settings, username="bench_failover", password="bench-pass-1", academy="CS")
            quota.grant(s, user_id=user.id, tokens=10**12, actor="bench")
        variants = {"own connection": "own", "one route": "one_route", "failing first": "failing_first"}
        caller = Caller(user_id=user.id, academy="CS")

        async def chat(model: str) -> float:
            started = time.perf_counter()
            answer = await gateway.chat(
                maker,
                settings,
                caller=caller,
                dialog=[{"role": "user", "content": "hi"}],
                model_name=model,
                max_tokens=32,
                record_history=False,
            )
            assert answer.content == healthy.reply_text
            return (time.perf_counter() - started) * 1000

        async def run() -> dict[str, list[float]]:
            timings: dict[str, list[float]] = {label: [] for label in variants}
            for _ in range(10):  # warm-up: connections, caches
                for model in variants.values():
                    await chat(model)
            for _ in range(args.requests):
                for label, model in variants.items():
                    timings[label].append(await chat(model))
            return timings

        timings = asyncio.run(run())

    base = statistics.median(timings["own connection"])
    print(f"{args.requests} chats per variant, interleaved (ms per whole chat through the gateway, SQLite)")
    for label, values in timings.items():
        values.sort()
        p50, p95 = statistics.median(values), values[int(len(values) * 0.95) - 1]
        print(f"  {label:16s} p50 {p50:6.2f}  p95 {p95:6.2f}  p50 vs own connection {p50 - base:+6.2f}")


if __name__ == "__main__":
    main()
