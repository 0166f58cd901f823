"""A real iFlytek Spark websocket server on 127.0.0.1 for tests (built on `websockets`).

    SparkServer(
        reply="你好，我是星火的替身。",     # the assistant's answer (split on spaces; one word = one delta)
        *,
        app_id="spark-app", api_key="spark-key", api_secret="spark-secret",
        path="/v3.5/chat",         # the websocket path the client must sign and use
        prompt_tokens=None,        # usage prompt_tokens (default: words of the messages + 3 per message)
        include_usage=True,        # False: the last frame carries no payload.usage
        fail_code=None,            # e.g. 10013: answer the request with an iFlytek error frame
        fail_message="upstream exploded",
        delay_before_first_byte=0.0,  # seconds between the request frame and the first answer frame
        chunk_delay=0.0,           # seconds between frames
        chunks=None,               # number of content frames (the reply's words are cycled)
        fail_after_chunks=None,    # after that many frames, an error frame (code fail_code or 10000)
        max_clock_skew=300,        # seconds a signed `date` may differ from now
    )

The handshake is checked like iFlytek does: the query's `authorization`, `date` and `host`
are verified with `backend.providers.iflytek.verify` (HMAC-SHA256 over host, date and the
request line) — a bad signature is refused with HTTP 401
`{"message": "HMAC signature cannot be verified"}`, a stale date with HTTP 403, another
path with 404. A request frame whose `header.app_id` is not `app_id` gets the error frame
code 10313. Answer frames are Spark's: `{"header": {"code": 0, "message": "Success", "sid",
"status": 0|1|2}, "payload": {"choices": {"status", "seq", "text": [{"content", "role":
"assistant", "index": 0}]}, "usage": {"text": {"question_tokens", "prompt_tokens",
"completion_tokens", "total_tokens"}}}}` with usage on the last (status 2) frame only.
`parameter.chat.max_tokens` smaller than the number of chunks cuts the answer.

`url` (ws://127.0.0.1:<port><path>) is what a client signs and connects to; `secret` is the
credentials packed as `app_id:api_key:api_secret`. `requests` holds one dict per accepted
connection: `path`, `query`, `headers`, `json` (the request frame). `rejected` lists the
refused handshakes' reasons. `first_chunk_sent`, `disconnected`, `streams_completed` and
`stop()` work as for the HTTP fakes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from backend.providers.iflytek import verify
from tests.fakes import ScriptedReply

SIGNATURE_REFUSED = '{"message":"HMAC signature cannot be verified"}'
DATE_REFUSED = '{"message":"HMAC signature cannot be verified, a valid date or x-date header is required"}'


class SparkServer(ScriptedReply):
    """A Spark chat websocket upstream that verifies iFlytek's URL signature."""

    def __init__(
        self,
        reply: str = "你好， 我是 星火 的 替身。",
        *,
        app_id: str = "spark-app",
        api_key: str = "spark-key",
        api_secret: str = "spark-secret",
        path: str = "/v3.5/chat",
        prompt_tokens: int | None = None,
        include_usage: bool = True,
        fail_code: int | None = None,
        fail_message: str = "upstream exploded",
        delay_before_first_byte: float = 0.0,
        chunk_delay: float = 0.0,
        chunks: int | None = None,
        fail_after_chunks: int | None = None,
        max_clock_skew: float = 300,
    ) -> None:
        self.reply = reply
        self.app_id, self.api_key, self.api_secret = app_id, api_key, api_secret
        self.path = path
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.fail_code = fail_code
        self.fail_message = fail_message
        self.delay_before_first_byte = delay_before_first_byte
        self.chunk_delay = chunk_delay
        self.chunks = chunks
        self.fail_after_chunks = fail_after_chunks
        self.max_clock_skew = max_clock_skew
        self.requests: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.first_chunk_sent = threading.Event()
        self.disconnected = threading.Event()
        self.streams_completed = 0
        self._accepted: dict[int, dict[str, Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._server: Any = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="SparkServer", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Spark server did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.path}"

    @property
    def secret(self) -> str:
        return f"{self.app_id}:{self.api_key}:{self.api_secret}"

    # --- server thread ---

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._stopping = asyncio.Event()
            self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._check_handshake)
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def _check_handshake(self, connection: ServerConnection, request: Any) -> Any:
        parts = urlsplit(request.path)
        if parts.path != self.path:
            self.rejected.append("path")
            return connection.respond(HTTPStatus.NOT_FOUND, '{"message":"no Route matched with those values"}\n')
        query = dict(parse_qsl(parts.query))
        if query.get("host") != request.headers.get("Host"):
            self.rejected.append("host")
            return connection.respond(HTTPStatus.UNAUTHORIZED, SIGNATURE_REFUSED + "\n")
        if not verify(query, self.api_key, self.api_secret, "GET", parts.path):
            self.rejected.append("signature")
            return connection.respond(HTTPStatus.UNAUTHORIZED, SIGNATURE_REFUSED + "\n")
        try:
            skew = abs((parsedate_to_datetime(query["date"]).timestamp()) - time.time())
        except (KeyError, TypeError, ValueError):
            skew = float("inf")
        if skew > self.max_clock_skew:
            self.rejected.append("date")
            return connection.respond(HTTPStatus.FORBIDDEN, DATE_REFUSED + "\n")
        record = {
            "path": parts.path,
            "query": query,
            "headers": {k.lower(): v for k, v in request.headers.raw_items()},
            "json": None,
        }
        self._accepted[id(connection)] = record
        self.requests.append(record)
        return None

    async def _pause(self, seconds: float) -> bool:
        assert self._stopping is not None
        if seconds <= 0:
            return not self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _handle(self, ws: ServerConnection) -> None:
        record = self._accepted.pop(id(ws), {"json": None})
        sid = "cht000" + uuid.uuid4().hex[:20]
        try:
            raw = await ws.recv()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            record["json"] = body
            if not isinstance(body, dict):
                await ws.send(_error_frame(10163, "request is not JSON", sid))
                return
            if (body.get("header") or {}).get("app_id") != self.app_id:
                await ws.send(_error_frame(10313, "app_id does not match the api_key", sid))
                return
            if not await self._pause(self.delay_before_first_byte):
                return
            if self.fail_code is not None and self.fail_after_chunks is None:
                await ws.send(_error_frame(self.fail_code, self.fail_message, sid))
                return
            await self._answer(ws, body, sid)
        except ConnectionClosed:
            self.disconnected.set()

    async def _answer(self, ws: ServerConnection, body: dict[str, Any], sid: str) -> None:
        deltas = self.deltas or [""]
        limit = ((body.get("parameter") or {}).get("chat") or {}).get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(deltas):
            deltas = deltas[:limit]
        messages = ((body.get("payload") or {}).get("message") or {}).get("text") or []
        prompt = self.prompt_count(messages)
        for seq, delta in enumerate(deltas):
            if self.fail_after_chunks is not None and seq >= self.fail_after_chunks:
                await ws.send(_error_frame(self.fail_code or 10000, self.fail_message, sid))
                return
            if seq and not await self._pause(self.chunk_delay):
                return
            last = seq == len(deltas) - 1
            status = 2 if last else (0 if seq == 0 else 1)
            frame: dict[str, Any] = {
                "header": {"code": 0, "message": "Success", "sid": sid, "status": status},
                "payload": {
                    "choices": {
                        "status": status,
                        "seq": seq,
                        "text": [{"content": delta, "role": "assistant", "index": 0}],
                    }
                },
            }
            if last and self.include_usage:
                completion = len(deltas)
                frame["payload"]["usage"] = {
                    "text": {
                        "question_tokens": prompt,
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    }
                }
            await ws.send(json.dumps(frame, ensure_ascii=False))
            self.first_chunk_sent.set()
        self.streams_completed += 1

    def stop(self) -> None:
        """Shut the server down and wait for its thread (idempotent)."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            assert self._stopping is not None
            self._stopping.set()
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SparkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error_frame(code: int, message: str, sid: str) -> str:
    return json.dumps({"header": {"code": code, "message": message, "sid": sid, "status": 2}}, ensure_ascii=False)
