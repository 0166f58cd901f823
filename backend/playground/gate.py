"""Sign-in for the playground: Gradio's `auth_dependency` and the gate in front of the page.

- `PlaygroundAuth` is the `auth_dependency`: every Gradio request (page, config, queue,
  upload, file) is allowed only for a valid, unrevoked Bearer access token or playground
  session cookie; it hands Gradio `user:<id>` / `admin:<id>` as the user name.
- `PlaygroundGate` is an ASGI middleware for the paths under the mount:
  * a request whose `Origin` is not the playground's own or the dashboard's is refused
    (403, no CORS headers; see `backend.playground.origins`);
  * `GET …?token=<dashboard link token>`: checked against the database and used up (a link
    signs in once, see `services.playground.redeem_link`); on success a 303 to the same URL
    without the token that sets the HttpOnly session cookie (the token leaves the address
    bar and the history); otherwise a 401 page. A browser signed in as another account gets
    the switch page instead (`backend.playground.links`), and `POST /playground/` of that
    page's form is the only way to switch;
  * `GET /playground/` with no valid credentials: a 401 page that says where to sign in,
    instead of Gradio's bare JSON.
  * Files (see `backend.playground.files`): an upload is moved into the caller's own folder;
    a request body naming any other file is refused (403); `file=` serves only the caller's
    own files and `proxy=`, `component_server` and `process_recording` (no component here
    uses them) answer 404. Refusals carry a generic translated message; what was asked for
    is logged on the server, never echoed.
  Everything else passes through to Gradio untouched (streams included).

The cookie is `SameSite=Lax` over http (the dashboard and the API on one host name, any
ports, are the same site) and `SameSite=None; Secure` over https so the dashboard may
embed the playground from another site.
"""

from __future__ import annotations

import html
import json
import logging
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
from sqlalchemy.orm import sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.accounts import identity
from backend.accounts.identity import Principal
from backend.config import Settings
from backend.playground import files, links, origins
from backend.playground import session as playground
from backend.playground.labels import label

log = logging.getLogger("meteor.playground")

COOKIE_NAME = "meteor_playground"
LINK_PARAM = "token"
LANG_PARAM = "lang"
API = "/gradio_api"
FILE_ROUTES = (API + "/file=", API + "/file/")
REFUSED_ROUTES = (API + "/proxy=", API + "/component_server", API + "/process_recording")
UPLOAD_ROUTE = API + "/upload"
MAX_JSON_BODY = 8 * 1024 * 1024  # far above any event's inputs (files travel by upload, not inline)


def bearer(request: Request) -> str | None:
    return identity.bearer_token(request.headers.get("authorization"))


def is_https(scope: Scope, request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return scope.get("scheme") == "https" or forwarded == "https"


class PlaygroundAuth:
    """Gradio's auth_dependency: the signed-in account's subject, or None (401)."""

    def __init__(self, settings: Settings, maker: sessionmaker) -> None:
        self.settings = settings
        self.maker = maker

    def account(self, request: Request) -> Principal | None:
        token, cookie = bearer(request), request.cookies.get(COOKIE_NAME)
        if not token and not cookie:
            return None
        with self.maker() as session:
            return playground.authenticate(session, self.settings, bearer=token, cookie=cookie)

    async def __call__(self, request: Request) -> str | None:
        account = await anyio.to_thread.run_sync(self.account, request)
        return account.subject if account else None


def denied_page(language: str | None, reason: str = "denied.body", status: int = 401) -> HTMLResponse:
    title, body = html.escape(label("denied.title", language)), html.escape(label(reason, language))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#333}"
        "h1{font-size:1.4rem}</style></head>"
        f"<body><h1>🔐 {title}</h1><p>{body}</p></body></html>"
    )
    return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})


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

    def _language(self, request: Request) -> str:
        """`?lang=` of the request, else of the page that made it (Gradio's own calls), else
        `Settings.language`."""
        if request.query_params.get(LANG_PARAM):
            return request.query_params[LANG_PARAM]
        referer = dict(parse_qsl(urlsplit(request.headers.get("referer", "")).query))
        return referer.get(LANG_PARAM) or self.settings.language

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._under_mount(scope["path"]):
            await self.app(scope, receive, send)
            return
        if not origins.is_allowed(self.settings, scope):
            await self._foreign_origin(scope, receive, send)
            return
        rest = scope["path"][len(self.prefix) :]
        if API in rest:
            await self._gradio_api(scope, receive, send, "/" + rest.lstrip("/"))
            return
        request = Request(scope)
        language = request.query_params.get(LANG_PARAM) or self.settings.language
        if scope["method"] == "POST" and scope["path"] in (self.prefix, self.prefix + "/"):
            response = await self._switch(scope, request, receive)
            await response(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
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

    async def _foreign_origin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request from a web origin the playground does not serve (see
        `backend.playground.origins`): 403, preflight included, with no CORS headers, so the
        browser neither sends credentialed requests nor lets the page read an answer."""
        request = Request(scope)
        log.warning("playground: a request from the foreign origin %r was refused", request.headers.get("origin"))
        message = label("error.origin", self._language(request))
        response = JSONResponse({"detail": {"error": message}}, status_code=403, headers={"Vary": "Origin"})
        await response(scope, receive, send)

    # --- sign-in links ------------------------------------------------------------------

    def _link_outcome(self, token: str, cookie: str | None) -> tuple[str, Principal | None, Principal | None]:
        """What a link does in this browser: ("signed_in", account) after using it up,
        ("kept", account) when it was used before by this same account's browser, ("ask",
        current, link's account) when the browser is signed in as someone else, ("denied",)."""
        with self.maker.begin() as session:
            current = playground.authenticate(session, self.settings, cookie=cookie) if cookie else None
            target = playground.check_link_token(session, self.settings, token)
            if target is None:
                used = playground.link_account(session, self.settings, token)
                if current is not None and used is not None and used.subject == current.subject:
                    return "kept", current, None
                return "denied", None, None
            if current is not None and current.subject != target.subject:
                return "ask", current, target
            account = playground.redeem_link(session, self.settings, token)
            return ("signed_in", account, None) if account is not None else ("denied", None, None)

    def _redeem(self, token: str) -> Principal | None:
        with self.maker.begin() as session:
            return playground.redeem_link(session, self.settings, token)

    async def _exchange(self, scope: Scope, request: Request, token: str, language: str) -> Response:
        cookie = request.cookies.get(COOKIE_NAME)
        outcome, account, other = await anyio.to_thread.run_sync(self._link_outcome, token, cookie)
        rest = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != LINK_PARAM]
        if outcome == "denied":
            return denied_page(language, "denied.link")
        if outcome == "ask":
            # "ask" comes with the cookie's account and the link's
            assert cookie is not None and account is not None and other is not None
            return links.switch_page(
                language=language,
                action=self.prefix + "/",
                current=account.name,
                other=other.name,
                link=token,
                confirm=links.confirm_code(self.settings, cookie, token),
                keep=rest,
            )
        return self._signed_in(scope, request, "?" + urlencode(rest), account if outcome == "signed_in" else None)

    def _signed_in(self, scope: Scope, request: Request, location: str, account: Principal | None) -> Response:
        """303 to the playground, with a new session cookie for `account` (None: keep the
        browser's own)."""
        response = RedirectResponse(location, status_code=303)
        if account is not None:
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

    async def _switch(self, scope: Scope, request: Request, receive: Receive) -> Response:
        """The switch page's own form, posted from this browser: checked against this
        browser's session cookie, then the link is used up and the session switched."""
        body = await _read_body(receive, 64 * 1024)
        form = dict(parse_qsl((body or b"").decode("utf-8", "replace"), keep_blank_values=True))
        language = form.get(LANG_PARAM) or self.settings.language
        token, given = form.get(LINK_PARAM, ""), form.get("confirm")
        cookie = request.cookies.get(COOKIE_NAME)
        if not token or not links.confirm_matches(self.settings, cookie, token, given):
            log.warning("playground: an account switch without this browser's confirmation was refused")
            return denied_page(language, "switch.refused", status=403)
        account = await anyio.to_thread.run_sync(self._redeem, token)
        if account is None:
            return denied_page(language, "denied.link")
        keep = [(k, v) for k, v in form.items() if k not in (LINK_PARAM, "confirm")]
        return self._signed_in(scope, request, self.prefix + "/?" + urlencode(keep), account)

    # --- files ---------------------------------------------------------------------------

    def _refusal(self, request: Request, account: Principal | None, status: int, what: str, detail) -> Response:
        """A generic translated refusal; what was asked for goes to the server log only."""
        log.warning(
            "playground %s refused for %s: %s %s",
            what,
            account.subject if account else "anonymous",
            request.url.path[:200],
            str(detail)[:500],
        )
        message = label("error.file" if status in (403, 404) else "error.generic", self._language(request))
        return JSONResponse({"detail": {"error": message}}, status_code=status, headers={"Cache-Control": "no-store"})

    async def _gradio_api(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        """Gradio's own routes under the mount: files and request bodies are checked against
        the caller (an anonymous caller owns no file; Gradio itself refuses it the rest)."""
        request = Request(scope)

        async def caller() -> Principal | None:
            return await anyio.to_thread.run_sync(self.auth.account, request)

        if rest.startswith(REFUSED_ROUTES):
            await self._refusal(request, None, 404, "route", rest)(scope, receive, send)
            return
        if rest.startswith(FILE_ROUTES):
            path = rest.split("file=", 1)[1] if rest.startswith(FILE_ROUTES[0]) else rest[len(FILE_ROUTES[1]) :]
            account = await caller()
            if not files.owns(self.settings, account.subject if account else None, path):
                await self._refusal(request, account, 404, "file", path)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if rest.rstrip("/") == UPLOAD_ROUTE:
            account = await caller()
            if account is None:
                await self.app(scope, receive, send)  # Gradio's 401
                return
            await self._upload(scope, receive, send, account)
            return
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            await self._refusal(request, None, 415, "multipart body", rest)(scope, receive, send)
            return
        body = await _read_body(receive, MAX_JSON_BODY)
        if body is None:
            await self._refusal(request, None, 413, "body", "too large")(scope, receive, send)
            return
        try:
            data = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            data = None  # not JSON: nothing Gradio could read a path from
        if any(p is not None for p in files.named_paths(data)):
            account = await caller()
            foreign = files.foreign_paths(self.settings, account.subject if account else None, data)
            if foreign:
                await self._refusal(request, account, 403, "file input", foreign[:3])(scope, receive, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, account: Principal) -> None:
        """Gradio's upload, then each file moved into the caller's folder: the answer names
        the caller's copies."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            else:
                await send(message)

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start is None:
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        if start["status"] == 200:
            try:
                uploaded = json.loads(body)
            except ValueError:
                uploaded = None
            if not isinstance(uploaded, list):
                await self._refusal(Request(scope), account, 500, "upload answer", body[:200])(scope, receive, send)
                return
            mine = await anyio.to_thread.run_sync(files.adopt, self.settings, account.subject, uploaded)
            body = json.dumps(mine).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is larger than `limit`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the client's own messages
    (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
