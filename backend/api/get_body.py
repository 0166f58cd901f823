"""Seed-003 list filters sent as a JSON body on GET (how the document shows them):
the body's fields join the query string, and a field given in both keeps the query's value."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api import envelope

LIST_PATHS = ("/model/message/list", "/model/conversation/list", "/model/manage", "/model/ol/manage")
MAX_BODY = 64 * 1024


class GetBodyAsQuery:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"].rstrip("/") not in LIST_PATHS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY or not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            fields = _scalar_fields(body)
        except RecursionError:  # e.g. 50,000 nested arrays: refuse, do not crash
            response = envelope.error_response(
                scope["path"], "APP_QUERY_METHOD_ERROR", "the JSON body nests too deeply", 400
            )
            await response(scope, receive, send)
            return
        if fields:
            given = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
            merged = {**fields, **given}
            scope = {**scope, "query_string": urlencode(merged).encode()}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _scalar_fields(body: bytes) -> dict[str, str]:
    """The body's string / number fields, when it is a JSON object; nothing otherwise (the
    endpoint then sees exactly the query string it was sent)."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}
