"""CORS for the bearer-authenticated API families, never for the cookie-authenticated playground.

The original web clients (the StrangeLoop frontend, the AiProject Vue admin) call the API from
another origin, so the browser asks first (`OPTIONS` preflight) and reads an answer only when it
carries `Access-Control-Allow-Origin`.

Two rules, by how a path authenticates:
- Every API path (seed-000, seed-003, /v1, /healthz, /docs) authenticates by a bearer header or a
  body the caller sends on purpose, never by something the browser attaches by itself. For these
  the origins in `METEOR_CORS_ORIGINS` are allowed, **without credentials**
  (`Access-Control-Allow-Credentials` is never sent, so a page can never make a cookie-carrying
  read): a foreign page learns nothing it could not learn with curl.
- `/playground` authenticates by an HttpOnly session cookie that the browser attaches by itself
  (SameSite=Lax: every port of the same host is the same site). Its paths pass through untouched:
  this middleware adds no CORS header to them and answers no preflight for them, whatever the
  setting says.

`METEOR_CORS_ORIGINS`: `*` (the default: any origin, since no API path has ambient credentials),
a comma-separated list of origins (`https://app.example.org,http://127.0.0.1:5173`) to narrow it,
or empty to send no CORS header at all.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "Accept-Language")
COOKIE_PREFIXES = ("/playground",)
MAX_AGE = 600


def is_cookie_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in COOKIE_PREFIXES)


class ApiCors:
    """Starlette's CORS middleware over the API paths only; cookie paths bypass it entirely."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.enabled = bool(origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            allow_credentials=False,
            max_age=MAX_AGE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or is_cookie_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        await self.cors(scope, receive, send)
