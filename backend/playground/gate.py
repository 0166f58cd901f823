"""Sign-in for the playground: Gradio's `auth_dependency` and the gate in front of the page.

- `PlaygroundAuth` is the `auth_dependency`: every Gradio request (page, config, queue,
  upload, file) is allowed only for a valid, unrevoked Bearer access token or playground
  session cookie; it hands Gradio `user:<id>` / `admin:<id>` as the user name.
- `PlaygroundGate` is an ASGI middleware for the paths under the mount:
  * `GET …?token=<dashboard link token>`: checked against the database; on success a 303
    to the same URL without the token that sets the HttpOnly session cookie (the token
    leaves the address bar and the history); otherwise a 401 page.
  * `GET /playground/` with no valid credentials: a 401 page that says where to sign in,
    instead of Gradio's bare JSON.
  Everything else passes through to Gradio untouched (streams included).

The cookie is `SameSite=Lax` over http (the dashboard and the API on one host name, any
ports, are the same site) and `SameSite=None; Secure` over https so the dashboard may
embed the playground from another site.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlencode

import anyio
from sqlalchemy.orm import sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.config import Settings
from backend.playground.labels import label
from backend.services import playground
from backend.services.playground import PlaygroundAccount

COOKIE_NAME = "meteor_playground"
LINK_PARAM = "token"
LANG_PARAM = "lang"


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_https(scope: Scope, request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return scope.get("scheme") == "https" or forwarded == "https"


class PlaygroundAuth:
    """Gradio's auth_dependency: the signed-in account's subject, or None (401)."""

    def __init__(self, settings: Settings, maker: sessionmaker) -> None:
        self.settings = settings
        self.maker = maker

    def account(self, request: Request) -> PlaygroundAccount | None:
        token, cookie = bearer(request), request.cookies.get(COOKIE_NAME)
        if not token and not cookie:
            return None
        with self.maker() as session:
            return playground.authenticate(session, self.settings, bearer=token, cookie=cookie)

    async def __call__(self, request: Request) -> str | None:
        account = await anyio.to_thread.run_sync(self.account, request)
        return account.subject if account else None


def denied_page(language: str | None, reason: str = "denied.body") -> HTMLResponse:
    title, body = html.escape(label("denied.title", language)), html.escape(label(reason, language))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#333}"
        "h1{font-size:1.4rem}</style></head>"
        f"<body><h1>🔐 {title}</h1><p>{body}</p></body></html>"
    )
    return HTMLResponse(page, status_code=401, headers={"Cache-Control": "no-store"})


class PlaygroundGate:
    """ASGI middleware in front of the mounted playground (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, prefix: str, settings: Settings, maker: sessionmaker) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.settings = settings
        self.maker = maker
        self.auth = PlaygroundAuth(settings, maker)

    def _under_mount(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or not self._under_mount(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        language = request.query_params.get(LANG_PARAM) or self.settings.language
        link = request.query_params.get(LINK_PARAM)
        if link is not None:
            response = await self._exchange(scope, request, link, language)
            await response(scope, receive, send)
            return
        if scope["path"] in (self.prefix, self.prefix + "/"):
            account = await anyio.to_thread.run_sync(self.auth.account, request)
            if account is None:
                await denied_page(language)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _check_link(self, token: str) -> PlaygroundAccount | None:
        with self.maker() as session:
            return playground.check_link_token(session, self.settings, token)

    async def _exchange(self, scope: Scope, request: Request, token: str, language: str) -> Response:
        account = await anyio.to_thread.run_sync(self._check_link, token)
        if account is None:
            return denied_page(language, "denied.link")
        rest = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != LINK_PARAM]
        response = RedirectResponse("?" + urlencode(rest), status_code=303)
        secure = is_https(scope, request)
        response.set_cookie(
            COOKIE_NAME,
            playground.session_token(self.settings, account),
            max_age=self.settings.access_token_minutes * 60,
            path=self.prefix,
            httponly=True,
            secure=secure,
            samesite="none" if secure else "lax",
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
