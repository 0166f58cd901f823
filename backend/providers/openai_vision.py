"""OpenAI-compatible vision model reading text out of a picture — protocol `openai-vision`.

`POST {ai_api}/chat/completions` with one user message holding a transcription prompt and
the picture as a `data:` URL (`image_url` content part), model = the connection's
`ai_version`, or its `ai_name` when that is empty; temperature 0, retries off. The HTTP client is the one
`openai_audio.http_client` builds (no redirects, pinned to checked addresses).
"""

from __future__ import annotations

import base64

import openai

from backend.providers import netguard
from backend.providers.base import ProviderError
from backend.providers.openai_audio import http_client, upstream_error
from backend.providers.recognition import Picture

PROTOCOL = "openai-vision"
PROMPT = (
    "Transcribe all text in this picture exactly as written, line by line, in its original language. "
    "Reply with the text only, no commentary. If there is no text, reply with nothing."
)


class OpenAIVisionReader:
    """One configured vision chat connection."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        *,
        name: str = PROTOCOL,
        timeout: float = 60.0,
        max_tokens: int = 1024,
        guard: netguard.Guard | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "none",
            timeout=timeout,
            max_retries=0,
            # no redirects; pinned to checked addresses. openai types http_client as httpx2.Client but
            # also takes an httpx one (is_legacy_httpx_sync_client)
            http_client=http_client(guard, timeout),  # type: ignore[arg-type]
        )

    def messages(self, picture: Picture) -> list[dict]:
        data_url = f"data:{picture.mime};base64,{base64.b64encode(picture.data).decode()}"
        return [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PROMPT},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ]

    def read(self, picture: Picture) -> str:
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=self.messages(picture),  # type: ignore[arg-type]  # plain dicts are the wire format
                temperature=0,
                max_tokens=self.max_tokens,
            )
        except openai.OpenAIError as exc:
            raise upstream_error("the vision model", exc, self.timeout) from None
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise ProviderError("the vision model answered without a message") from None
        return (content or "").strip()
