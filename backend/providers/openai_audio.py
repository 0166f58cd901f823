"""OpenAI-compatible speech recognition — protocol `openai-audio`.

`POST {ai_api}/audio/transcriptions` (multipart: `file` = the clip as a 16 kHz mono WAV
built in memory, `model` = the connection's `ai_version`, or its `ai_name` when that is
empty), through the official `openai` SDK with retries off. `ai_api` is the base URL
including `/v1`; the key is the connection's secret (any text when the server needs none).

The SDK gets its own httpx client: redirects are never followed (a 3xx is an error), no
proxy from the environment, and — given a `netguard.Guard` — every connection goes to an
address the SSRF guard checked when it opened it (no DNS rebinding).
"""

from __future__ import annotations

import httpx
import openai

from backend.providers import netguard
from backend.providers.base import ProviderError, ProviderTimeout
from backend.providers.recognition import pcm_to_wav

PROTOCOL = "openai-audio"


def http_client(guard: netguard.Guard | None, timeout: float) -> httpx.Client:
    """The httpx client an SDK-based engine uses: no redirects, no environment proxies,
    connections pinned to checked addresses when `guard` is given."""
    transport = guard.transport() if guard is not None else httpx.HTTPTransport()
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout)


def upstream_error(service: str, exc: openai.OpenAIError, timeout: float) -> Exception:
    """An SDK error as a ProviderError whose message names the cause, never the key; an
    address the guard refused at connect time comes back as that UnsafeURL (400)."""
    unsafe = netguard.unsafe_cause(exc)
    if unsafe is not None:
        return unsafe
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{service} did not answer within {timeout:g} s")
    if isinstance(exc, openai.APIStatusError):
        if 300 <= exc.status_code < 400:
            return ProviderError(
                f"{service} answered HTTP {exc.status_code}, a redirect; redirects are not followed, "
                "point the connection at the final URL"
            )
        hint = "; check the connection's key" if exc.status_code in (401, 403) else ""
        return ProviderError(f"{service} answered HTTP {exc.status_code}{hint}")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{service} could not be reached")
    return ProviderError(f"{service} failed: {type(exc).__name__}")


class OpenAITranscriber:
    """One configured `/audio/transcriptions` connection."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        name: str = PROTOCOL,
        timeout: float = 30.0,
        guard: netguard.Guard | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout = timeout
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            timeout=timeout,
            max_retries=0,
            # openai types http_client as httpx2.Client but also takes an httpx one (is_legacy_httpx_sync_client)
            http_client=http_client(guard, timeout),  # type: ignore[arg-type]
        )

    def transcribe(self, pcm: bytes) -> str:
        try:
            result = self.client.audio.transcriptions.create(
                model=self.model, file=("clip.wav", pcm_to_wav(pcm), "audio/wav"), response_format="json"
            )
        except openai.OpenAIError as exc:
            raise upstream_error("the transcription service", exc, self.timeout) from None
        text = result if isinstance(result, str) else getattr(result, "text", None)
        if text is None:
            raise ProviderError("the transcription service answered without text")
        return str(text).strip()
