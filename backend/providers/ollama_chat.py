"""Ollama through the official `ollama` client: `/api/chat`, streaming NDJSON or one JSON.

- Persona parameters go under `options` (`params.to_ollama_options`): num_predict (capped
  by the caller's max_tokens), num_ctx, mirostat, mirostat_eta, mirostat_tau, repeat_last_n,
  repeat_penalty, temperature, seed, stop, tfs_z, top_p, min_p, top_k — Ollama's own names.
  They are passed as a plain mapping, so `min_p` (missing from the client's `Options` model)
  reaches the server too.
- Usage: `prompt_eval_count` / `eval_count` of the final object; when Ollama leaves one out
  (it omits prompt_eval_count for a fully cached prompt), the offline tokenizer counts it.
- Timeout: the tighter of the connection's and the request's, for connecting and for every
  read -> `ProviderTimeout` (504). HTTP errors -> `UpstreamHTTPError` (502, with
  `upstream_status`); unreachable -> `ProviderError` (502). An optional key (for an Ollama
  behind an authenticating proxy) is sent as `Authorization: Bearer …` and never appears in
  a message. One `ollama.AsyncClient` per host, timeout and event loop, over the pooled
  keep-alive client settings of `upstream.async_http_client` (redirects never followed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama

from backend.providers.base import REQUEST_SENT, ChatEvent, ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.providers.params import to_ollama_options
from backend.providers.upstream import PerLoop, UpstreamHTTPError, async_transport, effective_timeout, short_cause


class OllamaChatProvider:
    """One Ollama host."""

    name = "ollama"

    def __init__(
        self, *, base_url: str, api_key: str | None = None, timeout: float | None = 30.0, guard: Any = None
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._api_key = api_key or None
        self._guard = guard  # netguard.Guard: connections pinned to checked addresses
        self._clients: dict[float, PerLoop[ollama.AsyncClient]] = {}

    def __repr__(self) -> str:
        return f"OllamaChatProvider(base_url={self.base_url!r})"

    def _client(self, timeout: float) -> ollama.AsyncClient:
        per_loop = self._clients.get(timeout)
        if per_loop is None:
            per_loop = self._clients.setdefault(timeout, PerLoop(lambda: self._new_client(timeout)))
        return per_loop.get()

    def _new_client(self, timeout: float) -> ollama.AsyncClient:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        return ollama.AsyncClient(
            host=self.base_url,
            timeout=httpx.Timeout(timeout),
            headers=headers,
            follow_redirects=False,
            trust_env=False,
            transport=async_transport(self._guard),
        )

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens by the offline tokenizer (the fallback when Ollama omits them)."""
        from backend.providers.tokens import count_tokens

        return count_tokens(messages)

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a piece of text, by the offline tokenizer."""
        from backend.providers.tokens import count_text_tokens

        return count_text_tokens(text)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        """REQUEST_SENT, text deltas, then one Usage."""
        timeout = effective_timeout(self.timeout, request.timeout)
        parts: list[str] = []
        final: Any = None
        client = self._client(timeout)
        yield REQUEST_SENT
        pieces: Any = None
        try:
            pieces = await client.chat(
                model=request.model,
                messages=request.messages,
                stream=True,
                options=to_ollama_options(request.params, request.max_tokens),
            )
            async for part in pieces:
                delta = part.message.content if part.message is not None else None
                if delta:
                    parts.append(delta)
                    yield delta
                if part.done:
                    final = part
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ProviderError
            raise self._translate(exc, timeout) from None
        finally:
            if pieces is not None:  # closes the HTTP response now, not when collected
                await pieces.aclose()
        if final is None:
            raise ProviderError("upstream stream ended before it was done")
        yield self._usage(final, request, "".join(parts))

    async def complete(self, request: ChatRequest) -> tuple[str, Usage]:
        """The whole answer in one non-streaming call."""
        timeout = effective_timeout(self.timeout, request.timeout)
        try:
            answer = await self._client(timeout).chat(
                model=request.model,
                messages=request.messages,
                stream=False,
                options=to_ollama_options(request.params, request.max_tokens),
            )
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, timeout) from None
        text = (answer.message.content or "") if answer.message is not None else ""
        return text, self._usage(answer, request, text)

    async def list_models(self) -> list[str]:
        """Model names the host has pulled (GET /api/tags)."""
        timeout = self.timeout or 30.0
        try:
            return [m.model for m in (await self._client(timeout).list()).models if m.model]
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, timeout) from None

    def _usage(self, final: Any, request: ChatRequest, text: str) -> Usage:
        prompt = final.prompt_eval_count
        completion = final.eval_count
        return Usage(
            prompt_tokens=int(prompt) if prompt is not None else self.count_tokens(request.messages),
            completion_tokens=int(completion) if completion is not None else self.count_text_tokens(text),
        )

    def _translate(self, exc: Exception, timeout: float) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(f"upstream did not answer within {timeout:g} s")
        if isinstance(exc, ollama.ResponseError):
            cause = short_cause(exc.error, self._api_key)
            if exc.status_code > 0:
                return UpstreamHTTPError(f"upstream answered HTTP {exc.status_code}: {cause}", exc.status_code)
            return ProviderError(f"upstream failed mid-stream: {cause}")
        if isinstance(exc, ConnectionError | httpx.ConnectError):
            return ProviderError(f"cannot reach upstream at {self.base_url}")
        if isinstance(exc, httpx.HTTPError):
            return ProviderError(f"upstream connection broke: {short_cause(exc, self._api_key)}")
        return ProviderError(f"upstream answer not understood: {short_cause(exc, self._api_key)}")
