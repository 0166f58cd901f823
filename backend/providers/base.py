"""The small interfaces every engine adapter implements.

Chat: `stream(request)` is an async iterator: first `REQUEST_SENT` once the request is on
its way to the engine (from then on the prompt is owed, even if the caller goes away), then
text deltas (`str`) and, last, exactly one `Usage`. Errors are `ProviderError` (HTTP 502) or
`ProviderTimeout` (HTTP 504); their message names the cause and never contains a key.
Providers are shared by every request of a process; each keeps its pooled HTTP client per
event loop (`upstream.PerLoop`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatRequest:
    """What a provider needs: the full message list (system prompt and few-shot pairs
    already in front of the dialog), the upstream model name, and the persona parameters
    (`PersonaParams`) which each provider translates for its backend."""

    messages: list[dict[str, str]]
    model: str
    params: Any = None  # backend.providers.params.PersonaParams
    max_tokens: int = 512
    timeout: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    status = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class ProviderTimeout(ProviderError):
    status = 504


async def collect(stream: AsyncIterator[ChatEvent]) -> tuple[str, Usage]:
    """Drain a provider stream into (text, usage)."""
    parts: list[str] = []
    usage: Usage | None = None
    async for item in stream:
        if isinstance(item, Usage):
            usage = item
        elif isinstance(item, str):
            parts.append(item)
    if usage is None:
        raise ProviderError("the model ended without reporting usage")
    return "".join(parts), usage


@dataclass(frozen=True)
class RequestSent:
    """The marker a provider yields once its request has left for the engine."""


REQUEST_SENT = RequestSent()

ChatEvent = str | Usage | RequestSent


class ChatProvider(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatEvent]: ...

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...
