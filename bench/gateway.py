"""Gateway overhead: Meteor's /v1 vs LiteLLM's proxy vs the upstream itself, all in one run.

    make bench-gateway            # = python -m bench.gateway

(a) straight to a fake OpenAI-compatible upstream on loopback that streams instantly,
(b) through Meteor's /v1/chat/completions (a real uvicorn server process, SQLite, with API
    key auth, quota reserve/settle and a usage row per request),
(c) through the LiteLLM proxy (installed by this script into bench/.venv-litellm, never into
    the main venv; skipped, saying why, when it cannot be installed).
Each: time to first token and total latency p50/p95/p99 at concurrency 1 and 50, and
requests per second. Then the embedded model's tokens/s through /textModel/stream against
llama-cpp-python called directly in-process. Bounded: a few minutes at most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
DELTAS = 20
PROMPT = [{"role": "user", "content": "Say something short."}]
C1_REQUESTS = 150
C50_REQUESTS = 600
WARMUP = 30
EMBEDDED_RUNS = 5
EMBEDDED_MAX_TOKENS = 96
EMBEDDED_PROMPT = [{"role": "user", "content": "Write a short paragraph about the stars."}]


# --- (a) the fake upstream: a raw ASGI app, so the baseline is as cheap as it gets ---------


async def upstream_app(scope, receive, send) -> None:  # noqa: ANN001 - raw ASGI
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/models"):
        await _send_json(send, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "x"}]})
        return
    request = json.loads(body or b"{}")
    created = int(time.time())
    usage = {"prompt_tokens": 12, "completion_tokens": DELTAS, "total_tokens": 12 + DELTAS}
    if not request.get("stream"):
        await _send_json(
            send,
            {
                "id": "chatcmpl-up",
                "object": "chat.completion",
                "created": created,
                "model": "fake-model",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "tok " * DELTAS}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )

    def chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
        data = {
            "id": "chatcmpl-up",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def emit(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    await emit(chunk({"role": "assistant", "content": ""}))
    for _ in range(DELTAS):
        await emit(chunk({"content": "tok "}))
    await emit(chunk({}, "stop"))
    if (request.get("stream_options") or {}).get("include_usage"):
        final = json.loads(chunk({})[6:])
        final["choices"] = []
        final["usage"] = usage
        await emit(b"data: " + json.dumps(final).encode() + b"\n\n")
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send_json(send, payload: dict) -> None:  # noqa: ANN001
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def meteor_app():
    """The uvicorn factory for the Meteor server process (Settings from METEOR_* env)."""
    from backend.server import create_app

    return create_app(playground=False)


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def start(name: str, argv: list[str], base: str, ready_path: str, log: Path, env: dict, timeout: float) -> Server:
    fh = log.open("wb")
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    server = Server(name, proc, base)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(base + ready_path, timeout=2).status_code < 500:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not start within {timeout:.0f} s; see {log}")


def ensure_litellm() -> Path | None:
    """The LiteLLM proxy's executable in its own venv, installed on first use; None (with
    the reason printed) when it cannot be installed here."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing litellm[proxy] into {LITELLM_VENV} (once; never into the main venv)…", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=120)
        done = subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"LiteLLM skipped: could not create its venv: {exc}")
        return None
    if done.returncode != 0 or not exe.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        print("LiteLLM skipped: pip could not install litellm[proxy]:\n  " + "\n  ".join(tail))
        return None
    return exe


# --- the Meteor database: a user with a key, the fake model, the embedded default ---------


def prepare_meteor(data_dir: Path, upstream_url: str) -> tuple[dict, str, str, str]:
    """A fresh SQLite Meteor; returns (env, API key, username, password)."""
    from backend import security
    from backend.config import Settings
    from backend.services import accounts, apikeys, bootstrap, quota
    from db import migrate
    from db.models import ModelAiOnline, ModelFile, ModelInfo
    from db.session import get_sessionmaker

    url = f"sqlite:///{data_dir / 'meteor.db'}"
    settings = Settings(data_dir=data_dir, database_url=url, bcrypt_rounds=4)
    migrate.upgrade(url)
    password = "bench-password-1"
    with get_sessionmaker(url).begin() as s:
        bootstrap.ensure_default_model(s)
        user = accounts.create_user(s, settings, username="bench", password=password, academy="CS")
        quota.grant(s, user_id=user.id, tokens=10**12, actor="bench")
        conn = ModelAiOnline(
            ai_api=upstream_url,
            ai_token_encrypted=security.encrypt_secret(settings, "sk-upstream"),
            ai_name="bench-upstream",
            protocol="openai",
            timeout=30,
        )
        persona = ModelFile()
        s.add_all([conn, persona])
        s.flush()
        s.add(
            ModelInfo(
                model_name="fake",
                link_type=1,
                aiol_id=conn.ai_id,
                ai_name="fake-model",
                model_file_id=persona.model_file_id,
            )
        )
        s.flush()
        _, key = apikeys.create_key(s, user_id=user.id, name="bench", actor="bench")
    env = {
        **os.environ,
        "METEOR_DATA_DIR": str(data_dir),
        "METEOR_DATABASE_URL": url,
        "METEOR_SWEEPER_INTERVAL_SECONDS": "3600",
    }
    return env, key, "bench", password


# --- the load -----------------------------------------------------------------------------


@dataclass
class Run:
    ttft: list[float]
    total: list[float]
    wall: float
    errors: int

    @property
    def rps(self) -> float:
        return len(self.total) / self.wall if self.wall else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] * 1000


async def one_stream(http: httpx.AsyncClient, url: str, key: str, model: str) -> tuple[float, float]:
    body = {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
    }
    t0 = time.perf_counter()
    ttft = None
    async with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    if ttft is None:
        raise RuntimeError("the stream carried no content")
    return ttft, total


async def load(url: str, key: str, model: str, concurrency: int, requests: int) -> Run:
    limits = httpx.Limits(max_connections=concurrency + 5, max_keepalive_connections=concurrency + 5)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        for _ in range(WARMUP):
            await one_stream(http, url, key, model)
        ttfts: list[float] = []
        totals: list[float] = []
        errors = 0
        queue = iter(range(requests))

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                try:
                    ttft, total = await one_stream(http, url, key, model)
                except (RuntimeError, httpx.HTTPError):
                    errors += 1
                    continue
                ttfts.append(ttft)
                totals.append(total)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Run(ttfts, totals, time.perf_counter() - t0, errors)


# --- embedded tokens/s --------------------------------------------------------------------


def embedded_compare(base: str, username: str, password: str, data_dir: Path) -> tuple[float, float]:
    """Tokens/s of SmolLM2 (a) through /textModel/stream, completion tokens (last frame) /
    request wall time, and (b) llama-cpp-python called in this process with the same prompt
    and sampling (the default persona, made greedy so both write the same tokens). Runs
    alternate, so a busy machine slows both alike; returns the medians (direct, served)."""
    from sqlalchemy import select

    from backend.config import Settings
    from backend.services import bootstrap, model_registry
    from backend.services.personas import build_messages, to_llama_kwargs
    from db.models import ModelFile, ModelInfo, UsageRecord
    from db.session import get_sessionmaker

    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'meteor.db'}")
    maker = get_sessionmaker(settings.resolved_database_url)
    with maker.begin() as s:
        persona_id = s.scalar(
            select(ModelInfo.model_file_id).where(ModelInfo.model_name == bootstrap.DEFAULT_MODEL_NAME)
        )
        s.get(ModelFile, persona_id).temperature = 0.0
    with maker() as s:
        model = model_registry.resolve(s, settings, name=None, user_id=None)
    messages = build_messages(model.system, model.examples, EMBEDDED_PROMPT)
    kwargs = to_llama_kwargs(model.params.model_copy(update={"num_predict": EMBEDDED_MAX_TOKENS}), EMBEDDED_MAX_TOKENS)

    from backend.providers.embedded_llama import default_model_path, load_llama

    # load_llama is llama_cpp.Llama with the extra buffer types off (they crash on this CPU)
    llm = load_llama(default_model_path(), n_ctx=2048)
    token = httpx.post(f"{base}/auth/login", json={"username": username, "password": password}).json()["access_token"]

    def direct() -> float:
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, **kwargs)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - t0)

    conversation: dict[str, int] = {}

    def served() -> float:
        # One conversation for all runs, as a chat session is: only its first exchange has
        # the model write a title (in the background), which the warm-up waits out below.
        t0 = time.perf_counter()
        completion = 0
        body = {"dialog": EMBEDDED_PROMPT, "max_tokens": EMBEDDED_MAX_TOKENS, **conversation}
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("POST", f"{base}/textModel/stream", json=body, headers=headers, timeout=120) as r:
            for line in r.iter_lines():
                frame = json.loads(line)
                if frame["header"]["status"] == 2:
                    if frame["header"]["code"] != 0:
                        raise RuntimeError(frame["header"]["message"])
                    completion = frame["payload"]["usage"]["text"]["completion_tokens"]
                    if frame["header"].get("conversation_id"):
                        conversation["conversation_id"] = frame["header"]["conversation_id"]
        return completion / (time.perf_counter() - t0)

    def title_written() -> bool:
        with maker() as s:
            return bool(s.scalar(select(UsageRecord.id).where(UsageRecord.admin_name == "system:titles").limit(1)))

    direct(), served()  # warm both
    deadline = time.monotonic() + 60
    while not title_written() and time.monotonic() < deadline:
        time.sleep(0.2)
    rates = [(direct(), served()) for _ in range(EMBEDDED_RUNS)]
    return statistics.median(d for d, _ in rates), statistics.median(s for _, s in rates)


# --- report -------------------------------------------------------------------------------


def row(name: str, run: Run) -> str:
    return (
        f"| {name} | {pct(run.ttft, 50):.1f} / {pct(run.ttft, 95):.1f} / {pct(run.ttft, 99):.1f} "
        f"| {pct(run.total, 50):.1f} / {pct(run.total, 95):.1f} / {pct(run.total, 99):.1f} "
        f"| {run.rps:.0f} | {run.errors} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="meteor-bench-"))
    servers: list[Server] = []
    py = sys.executable
    try:
        up_port = free_port()
        upstream = start(
            "upstream",
            [py, "-m", "uvicorn", "bench.gateway:upstream_app", "--host", "127.0.0.1", "--port", str(up_port)]
            + ["--log-level", "warning", "--no-access-log"],
            f"http://127.0.0.1:{up_port}",
            "/v1/models",
            tmp / "upstream.log",
            dict(os.environ),
            30,
        )
        servers.append(upstream)
        env, key, username, password = prepare_meteor(tmp, f"{upstream.base}/v1")
        m_port = free_port()
        meteor = start(
            "meteor",
            [py, "-m", "uvicorn", "bench.gateway:meteor_app", "--factory", "--host", "127.0.0.1"]
            + ["--port", str(m_port), "--log-level", "warning", "--no-access-log"],
            f"http://127.0.0.1:{m_port}",
            "/healthz",
            tmp / "meteor.log",
            env,
            60,
        )
        servers.append(meteor)

        litellm = None
        if not args.skip_litellm and (exe := ensure_litellm()) is not None:
            l_port = free_port()
            config = tmp / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                "  - model_name: fake\n"
                "    litellm_params:\n"
                "      model: openai/fake-model\n"
                f"      api_base: {upstream.base}/v1\n"
                "      api_key: sk-upstream\n"
                "litellm_settings:\n"
                "  telemetry: false\n"
                "  drop_params: true\n"
                "general_settings:\n"
                "  master_key: sk-bench-master\n"
            )
            l_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            try:
                litellm = start(
                    "litellm",
                    [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(l_port)]
                    + ["--num_workers", "1"],
                    f"http://127.0.0.1:{l_port}",
                    "/health/liveliness",
                    tmp / "litellm.log",
                    l_env,
                    180,
                )
                servers.append(litellm)
            except RuntimeError as exc:
                print(f"LiteLLM skipped: {exc}")
                litellm = None

        targets = [("(a) upstream direct", f"{upstream.base}/v1/chat/completions", "sk-x", "fake-model")]
        targets.append(("(b) Meteor /v1", f"{meteor.base}/v1/chat/completions", key, "fake"))
        if litellm is not None:
            targets.append(("(c) LiteLLM proxy", f"{litellm.base}/v1/chat/completions", "sk-bench-master", "fake"))

        results: dict[tuple[str, int], Run] = {}
        for concurrency, requests in ((1, C1_REQUESTS), (50, C50_REQUESTS)):
            for name, url, api_key, model in targets:
                print(f"… {name}, concurrency {concurrency}, {requests} streamed requests", flush=True)
                results[(name, concurrency)] = asyncio.run(load(url, api_key, model, concurrency, requests))

        print(f"\nStreamed chat completions, {DELTAS} deltas each, loopback, {os.cpu_count()} CPUs")
        for concurrency, requests in ((1, C1_REQUESTS), (50, C50_REQUESTS)):
            print(f"\nconcurrency {concurrency} ({requests} requests)\n")
            print("| target | TTFT ms p50 / p95 / p99 | total ms p50 / p95 / p99 | req/s | errors |")
            print("|---|---|---|---|---|")
            for name, *_ in targets:
                print(row(name, results[(name, concurrency)]))
            base = results[(targets[0][0], concurrency)]
            overhead = {}
            for name, *_ in targets[1:]:
                run = results[(name, concurrency)]
                overhead[name] = pct(run.total, 50) - pct(base.total, 50)
                print(
                    f"- {name} overhead over (a): TTFT p50 +{pct(run.ttft, 50) - pct(base.ttft, 50):.1f} ms, "
                    f"total p50 +{overhead[name]:.1f} ms, total p99 +{pct(run.total, 99) - pct(base.total, 99):.1f} ms"
                )
            if litellm is not None:
                b, c = results[("(b) Meteor /v1", concurrency)], results[("(c) LiteLLM proxy", concurrency)]
                print(
                    f"- (b)/(c): total p50 {pct(b.total, 50) / pct(c.total, 50):.2f}, "
                    f"overhead p50 {overhead['(b) Meteor /v1'] / overhead['(c) LiteLLM proxy']:.2f}, "
                    f"req/s {b.rps / c.rps:.2f}"
                )

        if not args.skip_embedded:
            if litellm is not None:  # give the embedded run the CPUs
                litellm.stop()
            print("\n… embedded SmolLM2: llama-cpp-python in-process vs /textModel/stream", flush=True)
            direct, served = embedded_compare(meteor.base, username, password, tmp)
            print(
                f"\nEmbedded SmolLM2-135M ({EMBEDDED_MAX_TOKENS} max tokens, median of {EMBEDDED_RUNS}): "
                f"direct {direct:.1f} tok/s, through /textModel/stream {served:.1f} tok/s, "
                f"ratio {served / direct:.2f}"
            )
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
