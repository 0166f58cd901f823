"""Which web origins may make credentialed requests to the playground.

Gradio's own CORS middleware answers `Access-Control-Allow-Origin: <origin>` with
`Allow-Credentials: true` to any localhost origin when served on localhost, and to every
origin when served under any other host name. The gate refuses (403, no CORS headers) every
request under the mount whose `Origin` is not one of:
- the playground's own origin (the scheme and `Host` the request came in with; a browser
  sends `Origin` on same-origin POSTs too);
- `METEOR_PUBLIC_API_URL`'s origin (the address the dashboard links the playground at);
- the dashboard's origin: `METEOR_PUBLIC_UI_URL` when set, else the request's host name on
  `METEOR_UI_PORT` (how `make run` serves the dashboard next to the API, see
  `dashboard_auth.playground_url`).
A request without `Origin` (a navigation, the iframe itself, a same-origin GET, a non-browser
client) is not a cross-origin request and goes on to the sign-in checks.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Scope

from backend.config import Settings

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | None) -> str | None:
    """`scheme://host[:port]` of a URL, lower-cased, the default port dropped; None if it has none."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def allowed_origins(settings: Settings, scope: Scope, headers: Headers) -> set[str]:
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    scheme = "https" if scope.get("scheme") == "https" or forwarded == "https" else "http"
    host = headers.get("host", "")
    allowed: set[str | None] = {origin_of(f"{scheme}://{host}")}
    allowed.add(origin_of(settings.public_api_url))
    if settings.public_ui_url:
        allowed.add(origin_of(settings.public_ui_url))
    else:
        hostname = urlsplit(f"//{host}").hostname or ""
        if hostname:
            name = f"[{hostname}]" if ":" in hostname else hostname
            allowed.update(origin_of(f"{s}://{name}:{settings.ui_port}") for s in ("http", "https"))
    return {origin for origin in allowed if origin is not None}


def is_allowed(settings: Settings, scope: Scope) -> bool:
    """True when the request carries no `Origin`, or one the playground serves."""
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None:
        return True
    normalized = origin_of(origin)
    return normalized is not None and normalized in allowed_origins(settings, scope, headers)
