"""What the network providers share: short, key-free errors, and the pooled async HTTP client
every upstream connection uses."""

from __future__ import annotations

import asyncio
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx

from backend.providers.base import ProviderError
from backend.providers.lean_http import http_transport

T = TypeVar("T")
MAX_CAUSE_CHARS = 200
_KEY_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-\*\.]{4,}"),
    re.compile(r"(?i)(bearer\s+)[^\s,;\"']+"),
    re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[^\s,;\"'&]+"),
)


class UpstreamHTTPError(ProviderError):
    """The upstream answered an HTTP error. `status` stays 502 (a gateway answer);
    `upstream_status` keeps what the upstream said."""

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


def redact(text: str, *secrets: str | None) -> str:
    """`text` with the given secrets and anything key-shaped replaced by `[redacted]`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _KEY_PATTERNS[0].sub("[redacted]", text)
    for pattern in _KEY_PATTERNS[1:]:
        text = pattern.sub(lambda m: m.group(1) + "[redacted]", text)
    return text


def short_cause(text: object, *secrets: str | None) -> str:
    """One line, at most MAX_CAUSE_CHARS, key-free."""
    line = " ".join(str(text).split())
    line = redact(line, *secrets)
    return line if len(line) <= MAX_CAUSE_CHARS else line[: MAX_CAUSE_CHARS - 1] + "…"


def effective_timeout(provider_timeout: float | None, request_timeout: float | None) -> float:
    """The tighter of the connection's timeout and the request's (both are ceilings)."""
    values = [t for t in (provider_timeout, request_timeout) if t is not None and t > 0]
    return min(values) if values else 30.0


# --- pooled clients -----------------------------------------------------------------------

# Keep-alive connections kept per upstream; more concurrent requests than this open extra
# connections (the gateway bounds them with METEOR_UPSTREAM_CONCURRENCY).
KEEPALIVE_CONNECTIONS = 1024
KEEPALIVE_SECONDS = 30.0


def async_transport(guard: Any = None) -> httpx.AsyncBaseTransport:
    """The transport under every upstream HTTP client: one keep-alive pool (`lean_http`: an
    idle connection is taken in O(1), so the several httpcore pools this needed are gone), no
    retries (the gateway decides), sockets on plain asyncio (`asyncio_net`); with a
    `netguard.Guard`, every new connection goes to the address the SSRF guard checked (no
    re-resolution between check and connect)."""
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS, keepalive_expiry=KEEPALIVE_SECONDS
    )
    if guard is not None:
        return guard.transport(asynchronous=True, limits=limits, retries=0)
    return http_transport(limits=limits, retries=0)


def async_http_client(
    *, timeout: float, guard: Any = None, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """The one way an upstream HTTP client is built: over `async_transport(guard)` (or the one
    given, made by it), and no redirect ever followed (an allowed upstream must not bounce a
    request to a forbidden address). `kwargs` go to httpx.AsyncClient."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        transport=transport or async_transport(guard),
        **kwargs,
    )


class PerLoop(Generic[T]):
    """One value per running event loop, made on first use: a pooled async client belongs
    to the loop that opened its connections (a server process has one loop; tests run many)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            with self._lock:
                value = self._values.get(loop)
                if value is None:
                    value = self._values[loop] = self._make()
        return value
