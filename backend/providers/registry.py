"""Which provider runs a model: a small factory over the four protocols, the process-wide
embedded engine, and the offline token counter.

    chat_provider("openai", base_url="https://host/v1", api_key="sk-…", timeout=30, settings=s)
    chat_provider("ollama", base_url=None, ...)   # None -> Settings.ollama_url
    chat_provider("spark", base_url="wss://spark-api.xf-yun.com/v3.5/chat", api_key=<packed secret>, ...)
    chat_provider("embedded", settings=s)         # the process-wide EmbeddedEngine
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from backend.providers.base import ChatProvider, ProviderError

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.providers.embedded_llama import EmbeddedEngine

PROTOCOLS = ("embedded", "openai", "ollama", "spark")

EMBEDDED_BASE_MODEL = "smollm2-135m-instruct"  # the embedded engine's base model name (embedded_llama.MODEL_NAME)
_lock = threading.Lock()
_embedded: EmbeddedEngine | None = None


def chat_provider(
    protocol: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    settings: Settings | None = None,
    allow_private: bool = True,
) -> ChatProvider:
    """A provider for `protocol` (one of PROTOCOLS). `api_key` is the connection's decrypted
    secret (for Spark, the packed `app_id:api_key:api_secret` or JSON; see spark_chat)."""
    if protocol == "embedded":
        return get_embedded(settings)
    guard = None
    if settings is not None:
        from backend.providers.netguard import Guard

        # every connection is pinned to the address its check passed; loopback and private
        # ranges only for admins' (shared) connections (`allow_private`, audit finding 9)
        guard = Guard(settings, allow_private=allow_private)
    if protocol == "openai":
        from backend.providers.openai_chat import OpenAIChatProvider

        if not base_url:
            raise ProviderError("an OpenAI-compatible connection needs a base URL", status=400)
        return OpenAIChatProvider(base_url=base_url, api_key=api_key, timeout=timeout, guard=guard)
    if protocol == "ollama":
        from backend.providers.ollama_chat import OllamaChatProvider

        host = base_url or (settings.ollama_url if settings is not None else "http://127.0.0.1:11434")
        return OllamaChatProvider(base_url=host, api_key=api_key, timeout=timeout, guard=guard)
    if protocol == "spark":
        from backend.providers.spark_chat import SparkChatProvider

        if not base_url:
            raise ProviderError("a Spark connection needs its websocket URL", status=400)
        return SparkChatProvider(base_url=base_url, secret=api_key or "", timeout=timeout, guard=guard)
    raise ProviderError(f"unknown provider protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}", status=400)


def get_embedded(settings: Settings | None = None) -> EmbeddedEngine:
    """The process-wide embedded engine (created on first call; the model itself loads on
    first use). `settings.embedded_parallel` sets how many requests decode together (read
    when the model is first used), `settings.embedded_queue_size` how many more may wait."""
    global _embedded
    from backend.providers.embedded_llama import EmbeddedEngine

    with _lock:
        if _embedded is None:
            if settings is None:
                _embedded = EmbeddedEngine(queue_size=32, parallel=8)
            else:
                _embedded = EmbeddedEngine(queue_size=settings.embedded_queue_size, parallel=settings.embedded_parallel)
        elif settings is not None:
            _embedded.queue_size = settings.embedded_queue_size
            _embedded.parallel = settings.embedded_parallel
        return _embedded
