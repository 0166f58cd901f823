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
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import openai
import orjson

from backend.providers.base import REQUEST_SENT, ChatEvent, ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.providers.netguard import UnsafeURL
from backend.providers.params import to_openai_fields
from backend.providers.upstream import (
    PerLoop,
    UpstreamHTTPError,
    async_http_client,
    async_transport,
    effective_timeout,
    short_cause,
)

NO_KEY = "no-key"  # the SDK insists on a key; keyless local servers ignore it
DRAIN_SECONDS = 1.0  # reading what follows [DONE], so the keep-alive connection can be reused
ERROR_BODY_BYTES = 64 * 1024  # at most this much of an error answer is read, for its message
WHOLE_ANSWER_BYTES = 8 * 1024 * 1024  # a JSON answer to a stream request is read whole, up to this
_BROKEN = (httpx.RequestError, ssl.SSLError, anyio.EndOfStream)


async def sse_chunks(response: httpx.Response) -> AsyncGenerator[list[Any], None]:
    """A streamed answer's Server-Sent Events, each event's data parsed once with `orjson.loads`
    and left as a dict, in lists: the events of one network read together (an upstream that
    answers at once sends them all in one). Lines are split over the body's bytes; what follows
    `[DONE]` is drained, so the keep-alive connection can be reused. An `error` object in the
    stream raises `StreamError` (after the events before it); a body that ends without a single
    event raises `NotUnderstood` (an empty answer would still be charged its prompt). The SDK's own decoder walks every
    line in Python and builds a pydantic object per chunk; per delta that profiled at about a
    tenth of the gateway's CPU with 200 open streams."""
    body = _body_bytes(response)
    pending, data, events = b"", [], 0
    try:
        async for piece in body:
            pending += piece
            *lines, pending = pending.split(b"\n")
            read: list[Any] = []
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith(b"data:"):
                    data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                elif not line and data:
                    event, data = b"\n".join(data), []
                    events += 1
                    if event.startswith(b"[DONE]"):
                        if read:
                            yield read
                        with anyio.move_on_after(DRAIN_SECONDS):
                            async for _ in body:
                                pass
                        return
                    chunk = orjson.loads(event)  # a fraction of json's cost per delta
                    if isinstance(chunk, dict) and chunk.get("error"):
                        if read:
                            yield read
                        raise StreamError(chunk["error"])
                    read.append(chunk)
            if read:
                yield read
        if not events:  # e.g. a captive portal's page: said, not taken for an empty answer
            kind = response.headers.get("content-type") or "no content type"
            raise NotUnderstood(f"the answer is not an event stream ({short_cause(kind)})")
    finally:
        await response.aclose()


def _body_bytes(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it arrives: the transport's own stream when it is not content-encoded
    (httpx's aiter_bytes puts two more generators and a decoder pass on every read)."""
    if response.headers.get("content-encoding", "identity").lower() in ("identity", ""):
        return aiter(response.stream)  # type: ignore[arg-type]  # an AsyncByteStream here
    return response.aiter_bytes()


async def whole_answer_chunks(response: httpx.Response) -> AsyncGenerator[list[Any], None]:
    """An upstream that answers a stream request with one whole JSON completion (some
    OpenAI-compatible servers ignore `stream`): its text and usage as one streamed chunk."""
    try:
        body = b""
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > WHOLE_ANSWER_BYTES:
                raise NotUnderstood(f"a whole answer over {WHOLE_ANSWER_BYTES} bytes")
    finally:
        await response.aclose()
    try:
        answer = json.loads(body)
        if isinstance(answer, dict) and answer.get("error"):
            raise StreamError(answer["error"])
        message = answer["choices"][0]["message"] if answer.get("choices") else {}
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise TypeError(type(content).__name__)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise NotUnderstood("a JSON answer that is not a chat completion") from None
    yield [{"choices": [{"delta": {"content": content}}], "usage": answer.get("usage")}]


class NotUnderstood(Exception):
    """A successful answer that is neither an event stream nor a chat completion."""


class StreamError(Exception):
    """An `error` object sent inside a stream."""

    def __init__(self, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) and message else "An error occurred during streaming")


@dataclass(frozen=True)
class _Clients:
    sdk: openai.AsyncOpenAI  # the non-streaming calls
    transport: httpx.AsyncBaseTransport  # the SDK client's pool, which the streamed chat uses directly


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
        self._chat_url = httpx.URL(base_url.rstrip("/") + "/chat/completions")
        self._stream_headers = {
            "Authorization": f"Bearer {self._api_key or NO_KEY}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "Meteor",
        }

    def _new_client(self) -> _Clients:
        timeout = self.timeout or 30.0
        transport = async_transport(self._guard)
        http = async_http_client(timeout=timeout, transport=transport)
        sdk = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key or NO_KEY,
            timeout=timeout,
            max_retries=0,
            # openai types http_client as httpx2.AsyncClient but also takes an httpx one (is_legacy_httpx_async_client)
            http_client=http,  # type: ignore[arg-type]
        )
        return _Clients(sdk, transport)

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
        create: Any = self._clients.get().sdk.chat.completions.create
        return await create(**fields, timeout=effective_timeout(self.timeout, request.timeout))

    async def _open_stream(self, request: ChatRequest) -> httpx.Response:
        """POST /chat/completions straight to the SDK client's pooled transport: the SDK's
        request building (options, headers merged three times, an idempotency key, the URL
        parsed again) profiled at about a fifth of the event loop's time per chat, and httpx's
        client layers on top of the transport (header merging, auth and redirect hooks, the
        cookie jar parsing every answer) at about a tenth more. Nothing of theirs applies: no
        redirect is followed anyway, and an upstream's cookies are never kept. An HTTP error
        raises UpstreamHTTPError with the upstream's own message."""
        sent = httpx.Request(
            "POST",
            self._chat_url,
            content=orjson.dumps(self._fields(request, stream=True)),
            headers=self._stream_headers,
            extensions={"timeout": httpx.Timeout(effective_timeout(self.timeout, request.timeout)).as_dict()},
        )
        response = await self._clients.get().transport.handle_async_request(sent)
        if not response.is_success:  # a redirect too: none is followed
            body = b""
            try:
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) >= ERROR_BODY_BYTES:
                        break
            finally:
                await response.aclose()
            raise UpstreamHTTPError(
                f"upstream answered HTTP {response.status_code}: "
                f"{short_cause(_body_message(body, response.reason_phrase), self._api_key)}",
                response.status_code,
            )
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """REQUEST_SENT, text deltas, then one Usage (the upstream's, else counted offline)."""
        parts: list[str] = []
        usage: Any = None
        yield REQUEST_SENT
        try:
            response = await self._open_stream(request)
            is_json = response.headers.get("content-type", "").startswith("application/json")
            async with aclosing(whole_answer_chunks(response) if is_json else sse_chunks(response)) as reads:
                async for chunks in reads:
                    # the deltas of one read go on as one: a client cannot tell, and each
                    # piece costs the gateway, the SSE encoder and the socket a pass
                    text = []
                    for chunk in chunks:
                        if not isinstance(chunk, dict):
                            continue
                        if chunk.get("usage") is not None:
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or ():
                            delta = choice.get("delta") if isinstance(choice, dict) else None
                            content = delta.get("content") if isinstance(delta, dict) else None
                            if content:
                                text.append(content)
                    if text:
                        content = "".join(text)
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
        try:  # the SDK does not check the answer's shape: an HTML page comes back as a str
            choices = answer.choices or []
            text = (choices[0].message.content or "") if choices else ""
            if not isinstance(text, str):
                raise TypeError(type(text).__name__)
        except (AttributeError, TypeError, IndexError):
            raise ProviderError("upstream answer not understood: it is not a chat completion") from None
        return text, self._usage(answer.usage, request, text)

    async def list_models(self) -> list[str]:
        """Model ids the upstream offers (GET /models)."""
        try:
            return [m.id async for m in self._clients.get().sdk.models.list(timeout=self.timeout or 30.0)]
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
        if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
            return ProviderTimeout(f"upstream did not answer within {timeout:g} s")
        if isinstance(exc, (*_BROKEN, UnsafeURL, openai.APIConnectionError)):
            if mid_stream:  # only the streamed chat, sent without the SDK
                return ProviderError(f"upstream connection broke mid-stream: {short_cause(exc, self._api_key)}")
            # the SDK's calls wrap what httpx (or the guard) raised: that is the cause to show
            cause = (exc.__cause__ or exc) if isinstance(exc, openai.APIConnectionError) else exc
            return ProviderError(f"cannot reach upstream: {short_cause(cause, self._api_key)}")
        if isinstance(exc, StreamError):
            return ProviderError(f"upstream failed mid-stream: {short_cause(exc, self._api_key)}")
        if isinstance(exc, NotUnderstood):
            return ProviderError(f"upstream answer not understood: {short_cause(exc, self._api_key)}")
        if isinstance(exc, openai.APIStatusError):
            return UpstreamHTTPError(
                f"upstream answered HTTP {exc.status_code}: {short_cause(_error_message(exc), self._api_key)}",
                exc.status_code,
            )
        if isinstance(exc, openai.APIError):  # the SDK's other errors: its calls are never streams
            return ProviderError(f"upstream answer not understood: {short_cause(exc.message, self._api_key)}")
        return ProviderError(f"upstream answer not understood: {short_cause(exc, self._api_key)}")


def _error_message(exc: openai.APIStatusError) -> str:
    return _inner_message(exc.body) or exc.message


def _body_message(body: bytes, fallback: str) -> str:
    """The message of an error answer's JSON (`{"error": {"message": ...}}` and its variants)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    text = body.decode("utf-8", "replace").strip()
    return _inner_message(parsed) or text or fallback


def _inner_message(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return None
