"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests.

    OpenAIServer(
        reply="Hello from the fake upstream.",   # the assistant's answer
        *,
        model="fake-model",        # echoed in answers
        models=None,               # ids listed by GET /v1/models (default: [model])
        include_usage=True,        # False: never send usage (neither the stream chunk nor the JSON field)
        api_key=None,              # when set, `Authorization: Bearer <api_key>` is required, else 401
        prompt_tokens=None,        # usage.prompt_tokens (default: words of the messages + 3 per message)
        fail_status=None,          # e.g. 500 or 401: every chat call answers that status with an error body
        fail_message="upstream exploded",
        delay_before_first_byte=0.0,  # seconds before the response starts (client timeouts)
        chunk_delay=0.0,           # seconds between streamed chunks (slow streams)
        chunks=None,               # number of content chunks (the reply's words are cycled to fill them)
        fail_after_chunks=None,    # after that many chunks, send an SSE error event and end the stream
        ignore_stream=False,       # True: a stream request gets the whole JSON completion (some servers do)
        html_page=None,            # a page: every chat call gets it as a 200 text/html (a captive portal)
    )

`url` is the base URL with `/v1` (what `openai.OpenAI(base_url=...)` takes). Endpoints:
`POST /v1/chat/completions` — with `"stream": true` an SSE stream of `chat.completion.chunk`
objects (a role chunk, one chunk per delta, a finish chunk, then — when the request asked
for `stream_options.include_usage` and `include_usage` is on — a chunk with empty
`choices` and `usage`, then `data: [DONE]`); otherwise one `chat.completion` JSON. A
request `max_tokens` smaller than the number of chunks cuts the answer (finish_reason
"length"). `GET /v1/models` lists `models`.

`deltas` is what a stream sends and `reply_text` their concatenation; usage
completion_tokens = number of deltas sent. See `tests/fakes/__init__.py` for `requests`,
`first_chunk_sent`, `disconnected`, `streams_completed` and `stop()`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes import FakeHTTPServer, ScriptedReply, _Handler


class OpenAIServer(ScriptedReply, FakeHTTPServer):
    """An OpenAI-compatible chat upstream (SSE streaming and JSON)."""

    def __init__(
        self,
        reply: str = "Hello from the fake upstream.",
        *,
        model: str = "fake-model",
        models: list[str] | None = None,
        include_usage: bool = True,
        api_key: str | None = None,
        prompt_tokens: int | None = None,
        ignore_stream: bool = False,
        html_page: str | None = None,
        **faults: Any,
    ) -> None:
        self.ignore_stream = ignore_stream
        self.html_page = html_page
        self.reply = reply
        self.model = model
        self.models = models if models is not None else [model]
        self.include_usage = include_usage
        self.api_key = api_key
        self.prompt_tokens = prompt_tokens
        super().__init__(**faults)

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def handle(self, handler: _Handler, method: str, body: Any) -> None:
        path = handler.path.split("?")[0].rstrip("/")
        if self.api_key is not None and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            handler.send_json(401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return
        if method == "GET" and path == "/v1/models":
            handler.send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models],
                },
            )
            return
        if method != "POST" or path != "/v1/chat/completions":
            handler.send_json(404, _error(f"Unknown path {path}", "invalid_request_error", "not_found"))
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            handler.send_json(400, _error("messages is required", "invalid_request_error", None))
            return
        if not self.pause(self.delay_before_first_byte):
            return
        if self.fail_status is not None:
            handler.send_json(self.fail_status, _error(self.fail_message, "server_error", None))
            return
        if self.html_page is not None:
            handler.send_bytes(200, "text/html; charset=utf-8", self.html_page.encode())
            return
        deltas = self.deltas
        finish = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and limit < len(deltas):
            deltas, finish = deltas[:limit], "length"
        prompt = self.prompt_count(body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": len(deltas), "total_tokens": prompt + len(deltas)}
        model = body.get("model") or self.model
        if body.get("stream") and not self.ignore_stream:
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) and self.include_usage
            self._stream(handler, model, deltas, finish, usage if wants_usage else None)
            return
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(deltas)}, "finish_reason": finish}
            ],
        }
        if self.include_usage:
            answer["usage"] = usage
        handler.send_json(200, answer)

    def _stream(
        self, handler: _Handler, model: str, deltas: list[str], finish: str, usage: dict[str, int] | None
    ) -> None:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return f"data: {json.dumps(data)}\n\n".encode()

        handler.start_stream("text/event-stream")
        if not handler.write_chunk(chunk({"role": "assistant", "content": ""})):
            return
        for index, delta in enumerate(deltas):
            if self.fail_after_chunks is not None and index >= self.fail_after_chunks:
                handler.write_chunk(f"data: {json.dumps(_error(self.fail_message, 'server_error', None))}\n\n".encode())
                return
            if index and not self.pause(self.chunk_delay):
                return
            if not handler.write_chunk(chunk({"content": delta})):
                return
            self.first_chunk_sent.set()
        if not handler.write_chunk(chunk({}, finish)):
            return
        if usage is not None:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            if not handler.write_chunk(f"data: {json.dumps(data)}\n\n".encode()):
                return
        if handler.write_chunk(b"data: [DONE]\n\n"):
            self.mark_completed()


def _error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
