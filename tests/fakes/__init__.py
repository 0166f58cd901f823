"""Real local protocol servers that stand in for upstream model services in tests.

Each fake listens on 127.0.0.1 on a random free port, serves from a background thread,
and is used as a context manager (or started/stopped by hand)::

    with OpenAIServer(reply="Hello there") as upstream:
        client = openai.OpenAI(base_url=upstream.url, api_key="k")
        ...
        assert upstream.requests[-1]["json"]["temperature"] == 0.3

Common attributes of every fake:
- `url`: where to point a client (see each module for its exact shape).
- `requests`: what the server received, in order; each item is a dict with `method`,
  `path`, `headers` (lower-case names) and `json` (the parsed body, or None).
- `first_chunk_sent`: a `threading.Event` set once the first streamed chunk is written —
  wait on it (with a timeout) before disconnecting a client mid-stream.
- `disconnected`: a `threading.Event` set when a client went away mid-stream.
- `streams_completed`: how many streamed answers were written to the end.
- `stop()`: shut the server down (idempotent; also done by `__exit__`).

Common fault knobs (constructor keyword arguments):
- `fail_status`: answer every model call with this HTTP status and an error body.
- `delay_before_first_byte`: seconds to wait before answering (for client timeouts).
- `chunk_delay`: seconds between streamed chunks (for slow streams).
- `chunks`: number of content chunks to stream (the reply's words are cycled to fill them).
- `fail_after_chunks`: cut the connection after that many chunks (an upstream dying mid-stream).

The modules: `tests.fakes.openai_server.OpenAIServer`,
`tests.fakes.ollama_server.OllamaServer`, `tests.fakes.spark_server.SparkServer`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def split_reply(reply: str, chunks: int | None = None) -> list[str]:
    """The deltas a fake streams: one per word of `reply` (spaces kept, so they join back
    to `reply`), or exactly `chunks` deltas made by cycling those words."""
    if not reply:
        return []
    words = reply.split(" ")
    n = len(words) if chunks is None else max(chunks, 0)
    return [words[i % len(words)] + (" " if i < n - 1 else "") for i in range(n)]


def count_words(messages: list[dict[str, Any]]) -> int:
    """The fakes' stand-in for a tokenizer: words in every message, plus 3 per message."""
    total = 0
    for message in messages or []:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        total += len(str(content).split()) + 3
    return total


class ScriptedReply:
    """What every fake answers: `reply` streamed as `deltas` (see `split_reply`), and the
    prompt size it reports (`prompt_tokens`, else `count_words` of the messages)."""

    reply: str
    chunks: int | None
    prompt_tokens: int | None

    @property
    def deltas(self) -> list[str]:
        return split_reply(self.reply, self.chunks)

    @property
    def reply_text(self) -> str:
        return "".join(self.deltas)

    def prompt_count(self, messages: list[dict[str, Any]]) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else count_words(messages)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def _record(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        fake = self.server.fake
        with fake._lock:
            fake.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "json": body,
                }
            )
        return body

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._record()
        self.server.fake.handle(self, "GET", None)

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self._record()
        self.server.fake.handle(self, "POST", body)

    # helpers the fakes use
    def send_json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, "application/json", json.dumps(payload).encode())

    def send_bytes(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def write_chunk(self, data: bytes) -> bool:
        """Write and flush; False when the client has gone away."""
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.server.fake.disconnected.set()
            return False
        return True


class _FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's 5 drops connects when a classroom's chats arrive at once
    fake: FakeHTTPServer


class FakeHTTPServer:
    """Base of the HTTP fakes: a ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(
        self,
        *,
        fail_status: int | None = None,
        fail_message: str = "upstream exploded",
        delay_before_first_byte: float = 0.0,
        chunk_delay: float = 0.0,
        chunks: int | None = None,
        fail_after_chunks: int | None = None,
    ) -> None:
        self.fail_status = fail_status
        self.fail_message = fail_message
        self.delay_before_first_byte = delay_before_first_byte
        self.chunk_delay = chunk_delay
        self.chunks = chunks
        self.fail_after_chunks = fail_after_chunks
        self.requests: list[dict[str, Any]] = []
        self.first_chunk_sent = threading.Event()
        self.disconnected = threading.Event()
        self.streams_completed = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _FakeHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name=type(self).__name__, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self, seconds: float) -> bool:
        """Wait up to `seconds`; False when the server is stopping (so stop() never hangs)."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()

    def mark_completed(self) -> None:
        with self._lock:
            self.streams_completed += 1

    def handle(self, handler: _Handler, method: str, body: Any) -> None:  # pragma: no cover - overridden
        handler.send_json(404, {"error": "not found"})

    def stop(self) -> None:
        """Shut the server down and wait for its thread."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
