"""A real Ollama-protocol HTTP server on 127.0.0.1 for tests.

    OllamaServer(
        reply="Hello from the fake Ollama.",  # the assistant's answer
        *,
        model="fake-llama",        # listed by GET /api/tags
        models=None,               # names listed by /api/tags; when given, /api/chat for any other
                                   # model answers 404 {"error": "model \"x\" not found, try pulling it first"}
        include_usage=True,        # False: the final object carries no prompt_eval_count / eval_count
        prompt_tokens=None,        # prompt_eval_count (default: words of the messages + 3 per message)
        fail_status=None,          # e.g. 500: /api/chat answers that status with {"error": fail_message}
        fail_message="upstream exploded",
        delay_before_first_byte=0.0,
        chunk_delay=0.0,
        chunks=None,
        fail_after_chunks=None,    # after that many chunks, write {"error": fail_message} and end
    )

`url` is the host URL (what `ollama.Client(host=...)` takes). Endpoints: `POST /api/chat` —
with `"stream": true` (the Ollama default when absent) newline-delimited JSON objects, one
per delta with `done: false`, then a final `done: true` object with `done_reason`,
`prompt_eval_count` and `eval_count`; with `"stream": false` one object with the whole
message. `options.num_predict` smaller than the number of chunks cuts the answer
(`done_reason: "length"`). `GET /api/tags` lists the models; `GET /` says "Ollama is running".

`deltas`, `reply_text`, `requests`, `first_chunk_sent`, `disconnected`,
`streams_completed` and `stop()` work as for the OpenAI fake (see `tests/fakes/__init__.py`).
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes import FakeHTTPServer, ScriptedReply, _Handler

CREATED_AT = "2025-01-01T00:00:00.000000Z"


class OllamaServer(ScriptedReply, FakeHTTPServer):
    """An Ollama chat upstream (NDJSON streaming and JSON)."""

    def __init__(
        self,
        reply: str = "Hello from the fake Ollama.",
        *,
        model: str = "fake-llama",
        models: list[str] | None = None,
        include_usage: bool = True,
        prompt_tokens: int | None = None,
        **faults: Any,
    ) -> None:
        self.reply = reply
        self.model = model
        self.models = models
        self.include_usage = include_usage
        self.prompt_tokens = prompt_tokens
        super().__init__(**faults)

    @property
    def url(self) -> str:
        return self.base_url

    def handle(self, handler: _Handler, method: str, body: Any) -> None:
        path = handler.path.split("?")[0].rstrip("/")
        if method == "GET" and path == "":
            handler.send_bytes(200, "text/plain", b"Ollama is running")
            return
        if method == "GET" and path == "/api/tags":
            names = self.models if self.models is not None else [self.model]
            handler.send_json(200, {"models": [_tag(name) for name in names]})
            return
        if method != "POST" or path != "/api/chat":
            handler.send_json(404, {"error": "404 page not found"})
            return
        if not isinstance(body, dict) or not body.get("model"):
            handler.send_json(400, {"error": "model is required"})
            return
        if self.models is not None and body["model"] not in self.models:
            handler.send_json(404, {"error": f'model "{body["model"]}" not found, try pulling it first'})
            return
        if not self.pause(self.delay_before_first_byte):
            return
        if self.fail_status is not None:
            handler.send_json(self.fail_status, {"error": self.fail_message})
            return
        deltas, reason = self.deltas, "stop"
        limit = (body.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and 0 < limit < len(deltas):
            deltas, reason = deltas[:limit], "length"
        final: dict[str, Any] = {
            "model": body["model"],
            "created_at": CREATED_AT,
            "done": True,
            "done_reason": reason,
            "total_duration": 1000,
            "load_duration": 10,
        }
        if self.include_usage:
            prompt = self.prompt_count(body.get("messages") or [])
            final.update(prompt_eval_count=prompt, prompt_eval_duration=100, eval_count=len(deltas), eval_duration=900)
        if body.get("stream", True) is False:
            final["message"] = {"role": "assistant", "content": "".join(deltas)}
            handler.send_json(200, final)
            return
        handler.start_stream("application/x-ndjson")
        for index, delta in enumerate(deltas):
            if self.fail_after_chunks is not None and index >= self.fail_after_chunks:
                handler.write_chunk(json.dumps({"error": self.fail_message}).encode() + b"\n")
                return
            if index and not self.pause(self.chunk_delay):
                return
            part = {
                "model": body["model"],
                "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": delta},
                "done": False,
            }
            if not handler.write_chunk(json.dumps(part).encode() + b"\n"):
                return
            self.first_chunk_sent.set()
        final["message"] = {"role": "assistant", "content": ""}
        if handler.write_chunk(json.dumps(final).encode() + b"\n"):
            self.mark_completed()


def _tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": CREATED_AT,
        "size": 98362432,
        "digest": "sha256:" + "0" * 64,
        "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
    }
