"""Gateway overhead and capacity: straight to a fake upstream vs Meteor's /v1 (SQLite, one
worker; PostgreSQL, two workers) vs the LiteLLM proxy, all in one run.

    make bench-gateway            # = python -m bench.gateway

1. Instant upstream (20 deltas at once), concurrency 1: TTFT and total p50 / p95, and the
   latency Meteor adds over the direct call.
2. Slow upstream (20 deltas 75 ms apart, ~1.5 s per answer) at concurrency 200 and 1000,
   bounded request counts and time: req/s, p50, p99, errors, and the resident memory each
   open stream costs the server (peak RSS of its process tree over idle, / concurrency).
3. The embedded SmolLM2 through /textModel/stream vs llama-cpp-python in-process, and the
   aggregate tokens/s at 1 / 4 / 8 concurrent streams; then llama.cpp's batched decoding
   (several sequences in one `llama_batch`) measured in-process at 1 and 8 sequences.

The load generator is a small raw-socket HTTP/1.1 client (keep-alive, chunked decoding, no
JSON parsing on the hot path) in its own process, so it is not the bottleneck: the direct
run's figures show its ceiling. LiteLLM is installed into bench/.venv-litellm (never into the
main venv) and skipped, saying why, when it cannot be. PostgreSQL comes from
METEOR_BENCH_POSTGRES_URL or METEOR_TEST_POSTGRES_URL (a throw-away database is created).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
DELTAS = 20
SLOW_GAP = 0.075  # seconds between deltas of the slow upstream: 20 deltas ~ 1.5 s
PROMPT = [{"role": "user", "content": "Say something short."}]
C1_REQUESTS = 300
WARMUP = 30
SLOW_RUNS = ((200, 600), (1000, 2000))  # (concurrency, requests)
RUN_DEADLINE = 90.0  # seconds: no request starts after this, whatever the count
EMBEDDED_RUNS = 5
EMBEDDED_MAX_TOKENS = 96
EMBEDDED_PROMPT = [{"role": "user", "content": "Write a short paragraph about the stars."}]
AGGREGATE_STREAMS = (1, 4, 8)


# --- the fake upstream: a raw ASGI app, so the baseline is as cheap as it gets ---------------


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
    gap = SLOW_GAP if str(request.get("model", "")).startswith("slow") else 0.0
    created = int(time.time())
    usage = {"prompt_tokens": 12, "completion_tokens": DELTAS, "total_tokens": 12 + DELTAS}
    if not request.get("stream"):
        await asyncio.sleep(gap * DELTAS)
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
    for n in range(DELTAS):
        if gap and n:
            await asyncio.sleep(gap)
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
    """The uvicorn factory for the Meteor server processes (Settings from METEOR_* env)."""
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
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def rss_bytes(self) -> int:
        """Resident memory of the server's process tree (the uvicorn supervisor and workers)."""
        return sum(_rss(pid) for pid in _tree(self.proc.pid))


def _tree(root: int) -> list[int]:
    pids, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            pids.append(child)
            frontier.append(child)
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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


# --- the Meteor databases: a user with a key, the fake models, the embedded default ---------


def prepare_meteor(data_dir: Path, url: str, upstream_url: str) -> tuple[dict, str, str, str]:
    """A fresh Meteor database at `url`; returns (env, API key, username, password)."""
    from backend import bootstrap, security
    from backend.accounts import apikeys
    from backend.accounts import service as accounts
    from backend.billing import quota
    from backend.config import Settings
    from db import migrate
    from db.models import ModelAiOnline, ModelFile, ModelInfo
    from db.session import get_sessionmaker

    data_dir.mkdir(parents=True, exist_ok=True)
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
            timeout=60,
        )
        s.add(conn)
        s.flush()
        for name, upstream_model in (("fake", "fake-model"), ("slow", "slow-model")):
            persona = ModelFile()
            s.add(persona)
            s.flush()
            s.add(
                ModelInfo(
                    model_name=name,
                    link_type=1,
                    aiol_id=conn.ai_id,
                    ai_name=upstream_model,
                    model_file_id=persona.model_file_id,
                )
            )
        s.flush()
        _, key = apikeys.create_key(s, user_id=user.id, name="bench", actor="bench")
    secrets_ = json.loads((data_dir / "secrets.json").read_text())
    env = {
        **os.environ,
        "METEOR_DATA_DIR": str(data_dir),
        "METEOR_DATABASE_URL": url,
        "METEOR_SWEEPER_INTERVAL_SECONDS": "3600",
        "METEOR_MODEL_TITLES": "false",
        "METEOR_JWT_SECRET": secrets_["jwt_secret"],
        "METEOR_SECRET_KEY": secrets_["secret_key"],
        "METEOR_COOKIE_KEY": secrets_["cookie_key"],
    }
    return env, key, "bench", password


def postgres_database() -> tuple[str, callable] | None:
    """A throw-away PostgreSQL database for the bench, and how to drop it (None: not configured)."""
    base = os.environ.get("METEOR_BENCH_POSTGRES_URL") or os.environ.get("METEOR_TEST_POSTGRES_URL")
    if not base:
        return None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db.session import dispose_all, normalize_url

    url = make_url(normalize_url(base))
    name = f"meteor_bench_{secrets.token_hex(3)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        dispose_all()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url.set(database=name).render_as_string(hide_password=False), drop


# --- the load generator: raw HTTP/1.1 over asyncio streams --------------------------------


class Connection:
    """One keep-alive connection; `post` sends a request and reads the response to its end."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def post(self, head: bytes, body: bytes, t0: float) -> tuple[int, float | None]:
        """(status, seconds to the first content delta or None)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader, writer = self.reader, self.writer
        writer.write(head + body)
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("connection closed")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        ttft = None
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data = await reader.readexactly(size + 2)
                if ttft is None and b"tok" in data:
                    ttft = time.perf_counter() - t0
        elif length is not None:
            data = await reader.readexactly(length)
            if b"tok" in data:
                ttft = time.perf_counter() - t0
        else:
            data = await reader.read()
            close = True
            if b"tok" in data:
                ttft = time.perf_counter() - t0
        if close:
            await self.close()
        return status, ttft


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    wall: float = 0.0
    errors: int = 0
    peak_rss: int = 0
    idle_rss: int = 0
    concurrency: int = 1

    @property
    def rps(self) -> float:
        return len(self.total) / self.wall if self.wall else 0.0

    @property
    def rss_per_stream_kib(self) -> float:
        return max(self.peak_rss - self.idle_rss, 0) / self.concurrency / 1024


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] * 1000


def request_bytes(url: str, key: str, model: str) -> tuple[str, int, bytes, bytes]:
    parsed = httpx.URL(url)
    body = json.dumps(
        {
            "model": model,
            "messages": PROMPT,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 64,
        }
    ).encode()
    head = (
        f"POST {parsed.raw_path.decode()} HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return parsed.host, parsed.port, head, body


async def load(
    url: str, key: str, model: str, concurrency: int, requests: int, server: Server | None, warmup: int = WARMUP
) -> Run:
    host, port, head, body = request_bytes(url, key, model)
    run = Run(concurrency=concurrency)
    connections = [Connection(host, port) for _ in range(concurrency)]
    for _ in range(warmup):
        await connections[0].post(head, body, time.perf_counter())
    if server is not None:
        run.idle_rss = server.rss_bytes()
    left = iter(range(requests))
    deadline = time.monotonic() + RUN_DEADLINE

    async def worker(conn: Connection) -> None:
        for _ in left:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                status, ttft = await conn.post(head, body, t0)
            except (OSError, ValueError, asyncio.IncompleteReadError):
                await conn.close()
                run.errors += 1
                continue
            if status != 200 or ttft is None:
                run.errors += 1
                continue
            run.ttft.append(ttft)
            run.total.append(time.perf_counter() - t0)

    async def sample() -> None:
        while True:
            run.peak_rss = max(run.peak_rss, server.rss_bytes())
            await asyncio.sleep(0.25)

    sampler = asyncio.ensure_future(sample()) if server is not None else None
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    run.wall = time.perf_counter() - t0
    if sampler is not None:
        sampler.cancel()
    for conn in connections:
        await conn.close()
    return run


def load_in_subprocess(url: str, key: str, model: str, concurrency: int, requests: int, pids: list[int]) -> Run:
    """Run `load` in a child process (its own CPU, its own event loop); RSS sampled there."""
    spec = json.dumps({"url": url, "key": key, "model": model, "c": concurrency, "n": requests, "pids": pids})
    out = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--load-worker", spec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE + 240,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-500:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Run(**data)


def load_worker(spec: str) -> None:
    args = json.loads(spec)

    class Pids:
        def rss_bytes(self) -> int:
            return sum(_rss(pid) for root in args["pids"] for pid in _tree(root))

    raise_nofile()
    server = Pids() if args["pids"] else None
    run = asyncio.run(load(args["url"], args["key"], args["model"], args["c"], args["n"], server))  # type: ignore[arg-type]
    print(json.dumps(run.__dict__))


def raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


# --- embedded tokens/s --------------------------------------------------------------------


def embedded_compare(base: str, username: str, password: str, data_dir: Path, url: str) -> dict[str, float]:
    """Tokens/s of SmolLM2 (a) through /textModel/stream, completion tokens (last frame) /
    request wall time, and (b) llama-cpp-python called in this process with the same prompt
    and sampling (the default persona, made greedy so both write the same tokens). Runs
    alternate, so a busy machine slows both alike. Then the aggregate through the server at
    1 / 4 / 8 concurrent streams."""
    from sqlalchemy import select

    from backend import bootstrap
    from backend.catalog import registry as model_registry
    from backend.catalog.personas import build_messages
    from backend.config import Settings
    from backend.providers.params import to_llama_kwargs
    from db.models import ModelFile, ModelInfo
    from db.session import get_sessionmaker

    settings = Settings(data_dir=data_dir, database_url=url)
    maker = get_sessionmaker(url)
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

    llm = load_llama(default_model_path(), n_ctx=2048)
    token = httpx.post(f"{base}/auth/login", json={"username": username, "password": password}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    body = {"dialog": EMBEDDED_PROMPT, "max_tokens": EMBEDDED_MAX_TOKENS}

    def direct() -> float:
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, **kwargs)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - t0)

    async def served_one(http: httpx.AsyncClient) -> int:
        completion = 0
        async with http.stream("POST", f"{base}/textModel/stream", json=body, headers=headers) as r:
            async for line in r.aiter_lines():
                frame = json.loads(line)
                if frame["header"]["status"] == 2:
                    if frame["header"]["code"] != 0:
                        raise RuntimeError(frame["header"]["message"])
                    completion = frame["payload"]["usage"]["text"]["completion_tokens"]
        return completion

    async def served(streams: int) -> float:
        async with httpx.AsyncClient(timeout=300) as http:
            t0 = time.perf_counter()
            tokens = await asyncio.gather(*(served_one(http) for _ in range(streams)))
            return sum(tokens) / (time.perf_counter() - t0)

    direct(), asyncio.run(served(1))  # warm both
    rates = [(direct(), asyncio.run(served(1))) for _ in range(EMBEDDED_RUNS)]
    result = {
        "direct": statistics.median(d for d, _ in rates),
        "served": statistics.median(s for _, s in rates),
    }
    for streams in AGGREGATE_STREAMS:
        result[f"aggregate_{streams}"] = asyncio.run(served(streams))
    return result


def batched_decoding(sequences: int, max_tokens: int = EMBEDDED_MAX_TOKENS) -> float:
    """Aggregate tokens/s of greedy decoding of `sequences` copies of the prompt in ONE llama
    context, all sequences in each `llama_batch` (llama.cpp's own batching, `n_seq_max`)."""
    import ctypes

    import llama_cpp
    import numpy as np

    from backend.providers.embedded_llama import _chat_formatter, _prompt_tokens, default_model_path, load_llama

    llm = load_llama(default_model_path(), n_ctx=256, n_batch=64)
    prompt = _prompt_tokens(llm, _chat_formatter(llm), EMBEDDED_PROMPT)
    # the Llama class drops n_seq_max / kv_unified, so the batched context is made here
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
    params.n_seq_max, params.kv_unified = sequences, True
    params.n_threads = params.n_threads_batch = os.cpu_count() or 1
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise RuntimeError("llama.cpp could not make a batched context")
    n_vocab = llm.n_vocab()
    eos = llm.token_eos()
    batch = llama_cpp.llama_batch_init(max(len(prompt) * sequences, sequences), 0, sequences)
    memory = llama_cpp.llama_get_memory(ctx)

    def fill(entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits

    def argmax(i: int) -> int:
        row = llama_cpp.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), (n_vocab,))))

    llama_cpp.llama_memory_clear(memory, True)
    t0 = time.perf_counter()
    entries = [(tok, pos, s, pos == len(prompt) - 1) for s in range(sequences) for pos, tok in enumerate(prompt)]
    fill(entries)
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed on the prompts")
    rows = [i for i, e in enumerate(entries) if e[3]]
    nexts = [argmax(i) for i in rows]
    alive = list(range(sequences))
    produced = sequences
    pos = len(prompt)
    for _ in range(max_tokens - 1):
        alive = [s for s in alive if nexts[s] != eos]
        if not alive:
            break
        fill([(nexts[s], pos, s, True) for s in alive])
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for i, s in enumerate(alive):
            nexts[s] = argmax(i)
        produced += len(alive)
        pos += 1
    rate = produced / (time.perf_counter() - t0)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return rate


# --- report -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        load_worker(args.load_worker)
        return

    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="meteor-bench-"))
    servers: list[Server] = []
    drop_pg = None
    py = sys.executable
    uvicorn_argv = [py, "-m", "uvicorn", "--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
    load_avg = os.getloadavg()[0]
    try:
        up_port = free_port()
        upstream = start(
            "upstream",
            [*uvicorn_argv, "bench.gateway:upstream_app", "--port", str(up_port)],
            f"http://127.0.0.1:{up_port}",
            "/v1/models",
            tmp / "upstream.log",
            dict(os.environ),
            30,
        )
        servers.append(upstream)
        targets: list[tuple[str, str, str, str, Server | None]] = [
            ("direct", f"{upstream.base}/v1/chat/completions", "sk-x", "fake-model", upstream)
        ]

        sqlite_url = f"sqlite:///{tmp / 'sqlite' / 'meteor.db'}"
        env, key, username, password = prepare_meteor(tmp / "sqlite", sqlite_url, f"{upstream.base}/v1")
        port = free_port()
        meteor = start(
            "meteor-sqlite",
            [*uvicorn_argv, "bench.gateway:meteor_app", "--factory", "--workers", "1", "--port", str(port)],
            f"http://127.0.0.1:{port}",
            "/healthz",
            tmp / "meteor-sqlite.log",
            env,
            90,
        )
        servers.append(meteor)
        targets.append(("Meteor SQLite ×1", f"{meteor.base}/v1/chat/completions", key, "fake", meteor))

        if not args.skip_postgres and (pg := postgres_database()) is not None:
            pg_url, drop_pg = pg
            pg_env, pg_key, _, _ = prepare_meteor(tmp / "pg", pg_url, f"{upstream.base}/v1")
            port = free_port()
            pg_server = start(
                "meteor-pg",
                [*uvicorn_argv, "bench.gateway:meteor_app", "--factory", "--workers", "2", "--port", str(port)],
                f"http://127.0.0.1:{port}",
                "/healthz",
                tmp / "meteor-pg.log",
                pg_env,
                90,
            )
            servers.append(pg_server)
            targets.append(("Meteor PostgreSQL ×2", f"{pg_server.base}/v1/chat/completions", pg_key, "fake", pg_server))
        elif not args.skip_postgres:
            print("PostgreSQL skipped: set METEOR_BENCH_POSTGRES_URL or METEOR_TEST_POSTGRES_URL")

        if not args.skip_litellm and (exe := ensure_litellm()) is not None:
            l_port = free_port()
            config = tmp / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                + "".join(
                    f"  - model_name: {name}\n"
                    "    litellm_params:\n"
                    f"      model: openai/{upstream_model}\n"
                    f"      api_base: {upstream.base}/v1\n"
                    "      api_key: sk-upstream\n"
                    for name, upstream_model in (("fake", "fake-model"), ("slow", "slow-model"))
                )
                + "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
                "general_settings:\n  master_key: sk-bench-master\n"
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
                    240,
                )
                servers.append(litellm)
                targets.append(
                    ("LiteLLM proxy ×1", f"{litellm.base}/v1/chat/completions", "sk-bench-master", "fake", litellm)
                )
            except RuntimeError as exc:
                print(f"LiteLLM skipped: {exc}")

        print(f"\nload average at start {load_avg:.1f}, {os.cpu_count()} CPUs; {DELTAS} deltas per answer\n")
        print(f"1. instant upstream, concurrency 1, {C1_REQUESTS} streamed requests (after {WARMUP} warm-up)\n")
        print("| target | TTFT ms p50 / p95 | total ms p50 / p95 | req/s | errors | added p50 ms |")
        print("|---|---|---|---|---|---|")
        base_run = None
        for name, url, api_key, model, _server in targets:
            run = load_in_subprocess(url, api_key, model, 1, C1_REQUESTS, [])
            base_run = base_run or run
            added = "" if run is base_run else f"+{pct(run.total, 50) - pct(base_run.total, 50):.2f}"
            print(
                f"| {name} | {pct(run.ttft, 50):.2f} / {pct(run.ttft, 95):.2f} | {pct(run.total, 50):.2f} / "
                f"{pct(run.total, 95):.2f} | {run.rps:.0f} | {run.errors} | {added} |",
                flush=True,
            )

        for concurrency, requests in SLOW_RUNS:
            answer_s = DELTAS * SLOW_GAP
            print(f"\n2. slow upstream (~{answer_s:.1f} s an answer), concurrency {concurrency}, {requests} requests\n")
            print("| target | req/s | × direct | total ms p50 / p99 | errors | RSS per open stream |")
            print("|---|---|---|---|---|---|")
            direct_rps = None
            for name, url, api_key, _model, server in targets:
                slow_model = "slow-model" if name == "direct" else "slow"
                pids = [server.proc.pid] if server is not None else []
                run = load_in_subprocess(url, api_key, slow_model, concurrency, requests, pids)
                direct_rps = direct_rps or run.rps
                print(
                    f"| {name} | {run.rps:.0f} | {run.rps / direct_rps:.2f} | {pct(run.total, 50):.0f} / "
                    f"{pct(run.total, 99):.0f} | {run.errors} | {run.rss_per_stream_kib:.0f} KiB |",
                    flush=True,
                )

        if not args.skip_embedded:
            for server in servers:
                if server.name in ("litellm", "meteor-pg"):
                    server.stop()  # give the embedded runs the CPUs
            print("\n3. embedded SmolLM2-135M: llama-cpp-python in-process vs /textModel/stream", flush=True)
            figures = embedded_compare(meteor.base, username, password, tmp / "sqlite", sqlite_url)
            print(
                f"\n{EMBEDDED_MAX_TOKENS} max tokens, greedy, median of {EMBEDDED_RUNS}: direct "
                f"{figures['direct']:.1f} tok/s, through /textModel/stream {figures['served']:.1f} tok/s, "
                f"ratio {figures['served'] / figures['direct']:.2f}"
            )
            print(
                "aggregate through /textModel/stream (one worker, one engine): "
                + ", ".join(f"{n} streams {figures[f'aggregate_{n}']:.1f} tok/s" for n in AGGREGATE_STREAMS)
            )
            meteor.stop()
            single = batched_decoding(1)
            eight = batched_decoding(8)
            print(
                f"llama.cpp batched decoding in-process (greedy, {EMBEDDED_MAX_TOKENS} tokens per sequence): "
                f"1 sequence {single:.1f} tok/s, 8 sequences in one batch {eight:.1f} tok/s aggregate, "
                f"×{eight / single:.2f}"
            )
    finally:
        for server in reversed(servers):
            server.stop()
        if drop_pg is not None:
            drop_pg()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
