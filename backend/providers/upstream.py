"""What the network providers share: turning upstream failures into short, key-free errors."""

from __future__ import annotations

import re

from backend.providers.base import ProviderError

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
