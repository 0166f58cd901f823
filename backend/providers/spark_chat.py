"""iFlytek Spark chat over its signed-URL websocket protocol, through the asyncio client of
`websockets` (redirects refused: a 3xx answer to the handshake is an error, never followed).

Credentials: a Spark connection keeps its three iFlytek credentials in the connection's one
encrypted secret, packed as `app_id:api_key:api_secret` or as the JSON object
`{"app_id": "…", "api_key": "…", "api_secret": "…"}` (both accepted; the same packing as the
other iFlytek engines, `backend.providers.iflytek_keys`). The connection's URL is the
websocket endpoint, e.g. `wss://spark-api.xf-yun.com/v3.5/chat`; the model name is Spark's
`domain` (e.g. `generalv3.5`).

Protocol (ORIGINALS.md): connect to `iflytek.signed_url(url, api_key, api_secret)`; send
`{"header": {"app_id"}, "parameter": {"chat": {domain, temperature, max_tokens, top_k}},
"payload": {"message": {"text": [{role, content}, …]}}}`; read frames — each carries
`payload.choices.text[].content` — until `header.status == 2`, whose
`payload.usage.text` has prompt_tokens and completion_tokens. A frame with `header.code != 0`
is an iFlytek error (`SparkError`, with `upstream_code`). Persona parameters are translated
by `params.to_spark_chat` (temperature clamped into Spark's (0, 1], top_k into 1-6; the rest
dropped).

Timeout: the tighter of the connection's and the request's, for the handshake and for
every frame -> `ProviderTimeout` (504). A refused handshake (bad signature: HTTP 401/403)
-> `UpstreamHTTPError`. No credential ever appears in a message.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from backend.providers.base import (
    REQUEST_SENT,
    ChatEvent,
    ChatRequest,
    ProviderError,
    ProviderTimeout,
    Usage,
    collect,
)
from backend.providers.iflytek import signed_url
from backend.providers.iflytek_keys import IflytekKeys, parse_keys
from backend.providers.params import to_spark_chat
from backend.providers.upstream import UpstreamHTTPError, effective_timeout, short_cause

DEFAULT_DOMAIN = "generalv3.5"
MAX_FRAME_BYTES = 4 * 1024 * 1024


class _connect_without_redirects(connect):  # noqa: N801 - websockets' own naming
    """`websockets.connect` that treats a redirect as the error it is here."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class SparkError(ProviderError):
    """An error frame from Spark (`header.code != 0`)."""

    def __init__(self, message: str, upstream_code: int) -> None:
        super().__init__(message)
        self.upstream_code = upstream_code


def parse_secret(secret: str | None) -> IflytekKeys:
    """The connection secret unpacked into app_id, api_key, api_secret (502 when malformed)."""
    return parse_keys(secret)


def pack_secret(app_id: str, api_key: str, api_secret: str) -> str:
    """The plain text to encrypt into a Spark connection's secret."""
    return IflytekKeys(app_id, api_key, api_secret).pack()


def spark_request(keys: IflytekKeys, request: ChatRequest) -> dict[str, Any]:
    """The first (and only) frame a client sends."""
    domain = request.model or DEFAULT_DOMAIN
    return {
        "header": {"app_id": keys.app_id, "uid": uuid.uuid4().hex[:32]},
        "parameter": {"chat": to_spark_chat(request.params, request.max_tokens, domain=domain)},
        "payload": {"message": {"text": [{"role": m["role"], "content": m["content"]} for m in request.messages]}},
    }


class SparkChatProvider:
    """One Spark websocket endpoint with its credentials."""

    name = "spark"

    def __init__(self, *, base_url: str, secret: str, timeout: float | None = 30.0, guard: Any = None) -> None:
        self.base_url = base_url
        self._guard = guard  # netguard.Guard: the socket goes to the checked address
        self.timeout = timeout
        self._secret = secret

    def __repr__(self) -> str:
        return f"SparkChatProvider(base_url={self.base_url!r})"

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens by the offline tokenizer (an estimate before Spark reports its own)."""
        from backend.providers.tokens import count_tokens

        return count_tokens(messages)

    def count_text_tokens(self, text: str) -> int:
        from backend.providers.tokens import count_text_tokens

        return count_text_tokens(text)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """REQUEST_SENT, text deltas, then one Usage (Spark's own counts from the last frame)."""
        keys = parse_secret(self._secret)
        secrets = (keys.api_key, keys.api_secret, keys.app_id)
        timeout = effective_timeout(self.timeout, request.timeout)
        url = signed_url(self.base_url, keys.api_key, keys.api_secret)
        pinned: dict[str, Any] = {}
        if self._guard is not None:
            parts_ = urlsplit(self.base_url)
            port = parts_.port or (443 if parts_.scheme == "wss" else 80)
            # resolved and checked once (off the loop: DNS blocks); the socket goes there
            pinned["host"] = await asyncio.to_thread(self._guard.address, parts_.hostname or "", port)
        try:
            ws: ClientConnection = await _connect_without_redirects(
                url, open_timeout=timeout, close_timeout=1, max_size=MAX_FRAME_BYTES, compression=None, **pinned
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self._translate(exc, timeout, secrets) from None
        parts: list[str] = []
        try:
            try:
                await ws.send(json.dumps(spark_request(keys, request), ensure_ascii=False))
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, timeout, secrets) from None
            yield REQUEST_SENT
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        raw = await ws.recv()
                except Exception as exc:  # noqa: BLE001
                    raise self._translate(exc, timeout, secrets) from None
                frame = _parse_frame(raw)
                header = frame.get("header") or {}
                code = int(header.get("code") or 0)
                if code != 0:
                    cause = short_cause(header.get("message") or "error", *secrets)
                    raise SparkError(f"Spark answered error {code}: {cause}", code)
                payload = frame.get("payload") or {}
                for item in (payload.get("choices") or {}).get("text") or ():
                    delta = item.get("content") if isinstance(item, dict) else None
                    if delta:
                        parts.append(delta)
                        yield delta
                if header.get("status") == 2:
                    yield self._usage((payload.get("usage") or {}).get("text"), request, "".join(parts))
                    return
        finally:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                ws.transport.abort()  # cancelled: no closing handshake to wait for
            else:
                await ws.close()

    async def complete(self, request: ChatRequest) -> tuple[str, Usage]:
        """The whole answer (Spark only streams; this collects the frames)."""
        return await collect(self.stream(request))

    def _usage(self, usage: Any, request: ChatRequest, text: str) -> Usage:
        if (
            isinstance(usage, dict)
            and usage.get("prompt_tokens") is not None
            and usage.get("completion_tokens") is not None
        ):
            return Usage(prompt_tokens=int(usage["prompt_tokens"]), completion_tokens=int(usage["completion_tokens"]))
        return Usage(prompt_tokens=self.count_tokens(request.messages), completion_tokens=self.count_text_tokens(text))

    def _translate(self, exc: Exception, timeout: float, secrets: tuple[str, ...]) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, socket.timeout | TimeoutError):
            return ProviderTimeout(f"upstream did not answer within {timeout:g} s")
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else None
            cause = short_cause(_message_of(body) or "handshake refused", *secrets)
            return UpstreamHTTPError(f"upstream answered HTTP {status}: {cause}", status)
        if isinstance(exc, ConnectionClosed):
            return ProviderError("upstream closed the connection before the answer ended")
        if isinstance(exc, WebSocketException):
            return ProviderError(f"upstream handshake failed: {short_cause(exc, *secrets)}")
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            return ProviderError(f"cannot reach upstream at {self.base_url}")
        return ProviderError(f"upstream connection broke: {short_cause(exc, *secrets)}")


def _parse_frame(raw: Any) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except (TypeError, ValueError):
        raise ProviderError("upstream sent a frame that is not JSON") from None
    if not isinstance(frame, dict):
        raise ProviderError("upstream sent a frame that is not a JSON object")
    return frame


def _message_of(body: str | None) -> str | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or body)
    return body
