"""OpenAI-compatible speech recognition — protocol `openai-audio`.

`POST {ai_api}/audio/transcriptions` (multipart: `file` = the clip as a 16 kHz mono WAV
built in memory, `model` = the connection's `ai_version`, or its `ai_name` when that is
empty), through the official `openai` SDK with retries off. `ai_api` is the base URL
including `/v1`; the key is the connection's secret (any text when the server needs none).
"""

from __future__ import annotations

import openai

from backend.providers.base import ProviderError, ProviderTimeout
from backend.providers.recognition import pcm_to_wav

PROTOCOL = "openai-audio"


def upstream_error(service: str, exc: openai.OpenAIError, timeout: float) -> ProviderError:
    """An SDK error as a ProviderError whose message names the cause, never the key."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{service} did not answer within {timeout:g} s")
    if isinstance(exc, openai.APIStatusError):
        hint = "; check the connection's key" if exc.status_code in (401, 403) else ""
        return ProviderError(f"{service} answered HTTP {exc.status_code}{hint}")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{service} could not be reached")
    return ProviderError(f"{service} failed: {type(exc).__name__}")


class OpenAITranscriber:
    """One configured `/audio/transcriptions` connection."""

    def __init__(
        self, base_url: str, api_key: str | None, model: str, *, name: str = PROTOCOL, timeout: float = 30.0
    ) -> None:
        self.name = name
        self.model = model
        self.timeout = timeout
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=0)

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
