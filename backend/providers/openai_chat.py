"""OpenAI-compatible chat upstreams (OpenAI, vLLM, llama.cpp server, LiteLLM, ...) through
the official `openai` SDK.

- Streaming asks for `stream_options={"include_usage": True}` and takes the usage chunk;
  an upstream that sends no usage is counted with the offline tokenizer
  (`tokens.count_tokens` / `count_text_tokens`, SmolLM2's BPE — tiktoken would download its
  tables at run time).
- Persona parameters go through `params.to_openai_fields` (temperature, top_p, seed, up to
  4 stop sequences, max_tokens); the rest has no true OpenAI equivalent and is dropped.
- One `openai.AsyncOpenAI` per connection (and event loop) over the pooled keep-alive client
  of `upstream.async_http_client` (redirects never followed).
- Timeouts: the tighter of the connection's timeout and the request's, applied to connecting
  and to every read (time to first byte and between chunks) -> `ProviderTimeout` (504).
  No SDK retries: the gateway decides.
- HTTP errors -> `UpstreamHTTPError` (status 502, `upstream_status` = theirs) with a short
  cause; unreachable upstream or a broken stream -> `ProviderError` (502). The API key never
  appears in a message: causes are passed through `upstream.short_cause`, which redacts it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import openai

from backend.providers.base import REQUEST_SENT, ChatEvent, ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.providers.params import to_openai_fields
from backend.providers.upstream import PerLoop, UpstreamHTTPError, async_http_client, effective_timeout, short_cause

NO_KEY = "no-key"  # the SDK insists on a key; keyless local servers ignore it
DRAIN_SECONDS = 1.0  # reading what follows [DONE], so the keep-alive connection can be reused
_BROKEN = (httpx.RequestError, ssl.SSLError, anyio.EndOfStream)


class ChunkStream(openai.AsyncStream[object]):
    """The SDK's stream (its request, status errors and timeouts) with the Server-Sent Events
    decoded here: lines split over the body's bytes, each event's data parsed once with
    `json.loads` and left as a dict. The SDK's own decoder walks every line in Python and
    post-processes every chunk; per delta that profiled at about a tenth of the gateway's CPU
    with 200 open streams. An `error` object in the stream raises `openai.APIError`, as the
    SDK does."""

    async def __stream__(self) -> AsyncIterator[object]:
        response = self.response
        body = response.aiter_bytes()
        pending, data = b"", []
        try:
            try:
                async for piece in body:
                    pending += piece
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.endswith(b"\r"):
                            line = line[:-1]
                        if line.startswith(b"data:"):
                            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                        elif not line and data:
                            event, data = b"\n".join(data), []
                            if event.startswith(b"[DONE]"):
                                with anyio.move_on_after(DRAIN_SECONDS):
                                    async for _ in body:
                                        pass
                                return
                            yield self._chunk(event)
            except httpx.TimeoutException as exc:
                raise openai.APITimeoutError(request=response.request) from exc  # type: ignore[arg-type]
            except _BROKEN as exc:
                raise openai.APIConnectionError(request=response.request) from exc  # type: ignore[arg-type]
        finally:
            await response.aclose()

    def _chunk(self, event: bytes) -> object:
        chunk = json.loads(event)
        if isinstance(chunk, dict) and chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(
                message if isinstance(message, str) and message else "An error occurred during streaming",
                request=self.response.request,  # type: ignore[arg-type]
                body=error,
            )
        return chunk


class OpenAIChatProvider:
    """One OpenAI-compatible connection: base URL (…/v1), key, timeout."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        count_messages: Callable[[list[dict[str, str]]], int] | None = None,
        count_text: Callable[[str], int] | None = None,
        guard: Any = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._api_key = api_key or None
        self._count_messages = count_messages
        self._count_text = count_text
        self._guard = guard  # netguard.Guard: connections pinned to checked addresses
        self._clients = PerLoop(self._new_client)

    def _new_client(self) -> openai.AsyncOpenAI:
        timeout = self.timeout or 30.0
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key or NO_KEY,
            timeout=timeout,
            max_retries=0,
            # openai types http_client as httpx2.AsyncClient but also takes an httpx one (is_legacy_httpx_async_client)
            http_client=async_http_client(timeout=timeout, guard=self._guard),  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChatProvider(base_url={self.base_url!r})"

    # --- token counting (the fallback when an upstream reports no usage) ---

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens by the offline tokenizer."""
        if self._count_messages is None:
            from backend.providers.tokens import count_tokens

            return count_tokens(messages)
        return self._count_messages(messages)

    def count_text_tokens(self, text: str) -> int:
        if self._count_text is None:
            from backend.providers.tokens import count_text_tokens

            return count_text_tokens(text)
        return self._count_text(text)

    # --- calls ---

    def _fields(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": stream,
            **to_openai_fields(request.params, request.max_tokens),
        }
        if stream:
            fields["stream_options"] = {"include_usage": True}
        return fields

    async def _create(self, request: ChatRequest) -> Any:
        fields = self._fields(request, stream=False)
        create: Any = self._clients.get().chat.completions.create
        return await create(**fields, timeout=effective_timeout(self.timeout, request.timeout))

    async def _open_stream(self, request: ChatRequest) -> openai.AsyncStream[Any]:
        """The SDK's request with each chunk left as the parsed JSON dict (`ChunkStream`):
        building the SDK's pydantic chunk objects and transforming the request params cost
        more CPU than the rest of the gateway's hot path (profiled; see the README's gateway
        figures)."""
        return await self._clients.get().post(
            "/chat/completions",
            cast_to=object,
            body=self._fields(request, stream=True),
            options={"timeout": effective_timeout(self.timeout, request.timeout)},
            stream=True,
            stream_cls=ChunkStream,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """REQUEST_SENT, text deltas, then one Usage (the upstream's, else counted offline)."""
        parts: list[str] = []
        usage: Any = None
        yield REQUEST_SENT
        try:
            async with await self._open_stream(request) as chunks:
                async for chunk in chunks:
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("usage") is not None:
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") if isinstance(choice, dict) else None
                        content = delta.get("content") if isinstance(delta, dict) else None
                        if content:
                            parts.append(content)
                            yield content
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self._translate(exc, request, mid_stream=bool(parts)) from None
        yield self._usage(usage, request, "".join(parts))

    async def complete(self, request: ChatRequest) -> tuple[str, Usage]:
        """The whole answer in one non-streaming call."""
        try:
            answer = await self._create(request)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, request) from None
        choices = answer.choices or []
        text = (choices[0].message.content or "") if choices else ""
        return text, self._usage(answer.usage, request, text)

    async def list_models(self) -> list[str]:
        """Model ids the upstream offers (GET /models)."""
        try:
            return [m.id async for m in self._clients.get().models.list(timeout=self.timeout or 30.0)]
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, None) from None

    def _usage(self, usage: Any, request: ChatRequest, text: str) -> Usage:
        if isinstance(usage, dict):  # a stream's usage chunk, left as JSON
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        else:
            prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if prompt is not None and completion is not None:
            return Usage(prompt_tokens=int(prompt), completion_tokens=int(completion))
        return Usage(prompt_tokens=self.count_tokens(request.messages), completion_tokens=self.count_text_tokens(text))

    def _translate(self, exc: Exception, request: ChatRequest | None, *, mid_stream: bool = False) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        timeout = effective_timeout(self.timeout, request.timeout if request else None)
        if isinstance(exc, openai.APITimeoutError):
            return ProviderTimeout(f"upstream did not answer within {timeout:g} s")
        if isinstance(exc, openai.APIStatusError):
            return UpstreamHTTPError(
                f"upstream answered HTTP {exc.status_code}: {short_cause(_error_message(exc), self._api_key)}",
                exc.status_code,
            )
        if isinstance(exc, openai.APIConnectionError):
            if mid_stream:
                return ProviderError(f"upstream connection broke mid-stream: {short_cause(exc, self._api_key)}")
            return ProviderError(f"cannot reach upstream: {short_cause(exc.__cause__ or exc, self._api_key)}")
        if isinstance(exc, openai.APIError):  # an error event inside the stream
            return ProviderError(f"upstream failed mid-stream: {short_cause(exc.message, self._api_key)}")
        return ProviderError(f"upstream answer not understood: {short_cause(exc, self._api_key)}")


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return exc.message
