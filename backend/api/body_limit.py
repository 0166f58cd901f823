"""Request body caps per route family, enforced while the body streams in.

- `/auth`, `/admin`, `/user` and everything not named below: `METEOR_BODY_MAX_BYTES` (64 kB);
- chat and model management (`/textModel`, `/v1`, `/model`): `METEOR_CHAT_BODY_MAX_BYTES` (1 MB);
- uploads (`/voiceModel`, `/PictureToTextModel`) keep `METEOR_UPLOAD_MAX_BYTES`, enforced by
  their own streaming reader (backend/api/media.py); the playground by Gradio's
  `max_file_size`.

A declared Content-Length over the cap is answered 413 before a byte of the body is read;
a chunked (or under-declared) body is counted as it arrives and answered 413 the moment it
passes the cap, so no route ever holds more than the cap in memory. The answer is in the
family's envelope.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api import envelope
from backend.config import Settings

CHAT_PREFIXES = ("/textModel", "/v1/", "/model/")
UNCAPPED_PREFIXES = ("/voiceModel", "/PictureToTextModel", "/playground")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the cap; FastAPI passes HTTPExceptions
    through its body parsing, so the envelope handler answers it as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes for this endpoint")


def limit_for(settings: Settings, path: str) -> int | None:
    if path.startswith(UNCAPPED_PREFIXES):
        return None
    if path.startswith(CHAT_PREFIXES) or path in ("/v1", "/model"):
        return settings.chat_body_max_bytes
    return settings.body_max_bytes


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = limit_for(self.settings, path)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        exc = BodyTooLarge(limit)
        path = scope["path"]
        code = envelope.VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
        response = envelope.error_response(path, code, exc.detail, 413)
        response.headers["Connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)
