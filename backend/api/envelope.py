"""The three envelopes and the exception handlers that put every error into the right one.

- seed 000 (everything not below): `{"code": 0, "msg": ...}`, errors `{"code": "NAME", "msg": ...}`
- seed 003 (`/model/...`, and StrangeLoop's sign-in `/sys/...`): `{"code": 200, "message": "Success",
  "data": ...}`, errors with the HTTP status as code and `data: null`
- OpenAI-compatible (`/v1/...`): `{"error": {"message", "type", "code"}}`

Seed-000 errors carry the fitting HTTP status, except towards the original clients, which
read a reply only when its status is 200 (the original backend answered every domain error
with 200 and the string code): see `original_client`. The real status then travels in the
`X-Meteor-Status` header.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api import schemas
from backend.errors import ServiceError

log = logging.getLogger("meteor.api")

# Seed-000 path -> the error code its invalid input is reported with.
VALIDATION_CODES: dict[str, str] = {}


def on_invalid(code: str, *paths: str) -> None:
    """Declare which seed error code bad input on these paths gets."""
    for path in paths:
        VALIDATION_CODES[path] = code


def ok(msg: str, **extra: Any) -> dict[str, Any]:
    """A seed-000 success: `{"code": 0, "msg": msg, ...extra}`."""
    return {"code": 0, "msg": msg, **extra}


def success(data: Any = None) -> dict[str, Any]:
    """A seed-003 success."""
    return {"code": 200, "message": "Success", "data": data}


def family(path: str) -> str:
    if path.startswith(("/model/", "/sys/")) or path == "/model":
        return "seed003"
    if path.startswith("/v1/") or path == "/v1":
        return "openai"
    return "seed000"


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def original_client(request: Request) -> bool:
    """Whether a seed-000 error goes to this caller as the original backend answered it
    (HTTP 200, the code in the body). `METEOR_SEED000_ERROR_STATUS`: `200` always, `http`
    never, `auto` (default) for the two original clients, recognised by what they send:

    - the desktop client: `METEOR_LEGACY_UUID_AUTH` is on and the request has no
      `Authorization` header (the client never sends one: it names the user by `uuid` +
      `username`, or `user_id` when redeeming, and logs in and registers without any);
    - the Vue admin app: a browser (an `Origin` header) calling an `/admin/...` path — Meteor's
      own admin UI is the dashboard, which calls no API from the browser.
    """
    settings = getattr(request.app.state, "settings", None)
    mode = getattr(settings, "seed000_error_status", "http")
    if mode == "200":
        return True
    if mode != "auto":
        return False
    if settings is not None and settings.legacy_uuid_auth and "authorization" not in request.headers:
        return True
    return request.url.path.startswith("/admin/") and "origin" in request.headers


def error_response(
    path: str,
    code: str,
    message: str,
    status: int,
    extra: dict | None = None,
    request: Request | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    fam = family(path)
    if fam == "seed000" and request is not None and status != 200 and original_client(request):
        body: dict[str, Any] = {"code": code, "msg": message, **(extra or {})}
        return JSONResponse(body, status_code=200, headers={**(headers or {}), "X-Meteor-Status": str(status)})
    if fam == "seed003":
        body = {"code": status, "message": message, "data": None}
    elif fam == "openai":
        body = {
            "error": {"message": message, "type": OPENAI_TYPES.get(status, "api_error"), "code": code, "param": None}
        }
    else:
        body = {"code": code, "msg": message, **(extra or {})}
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers or None)


def describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # FastAPI's spec, with each family's error statuses
        return schemas.finish(base_openapi(), family)

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        retry_after = exc.extra.get("retry_after")
        # UPSTREAM_BUSY and rate limits (backend/accounts/rate_limits.py) say when to come back
        headers = {"Retry-After": str(math.ceil(retry_after))} if isinstance(retry_after, (int, float)) else None
        return error_response(request.url.path, exc.code, exc.message, exc.status, request=request, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
        status = 400 if family(path) == "seed003" else 422
        return error_response(path, code, describe_validation(exc), status, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        code = {404: "APP_NOT_FOUND_ERROR", 405: "APP_QUERY_METHOD_ERROR"}.get(exc.status_code, "APP_INTERNAL_ERROR")
        if exc.status_code == 400:  # a body that cannot even be decoded
            code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
            message = f"request body could not be read: {exc.detail}"
            return error_response(path, code, message, 400, request=request)
        elif exc.status_code == 413:  # backend/api/body_limit.py
            code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
            message = str(exc.detail)
        elif exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        # 405 keeps Starlette's Allow header (the methods the path has). Only a body that
        # cannot be read or is too large is a domain error the original clients get as 200;
        # an unknown path or method keeps its status.
        domain = request if exc.status_code in (400, 413) else None
        return error_response(
            path, code, message, exc.status_code, request=domain, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A number (or text) the column cannot hold got past a schema: bad input, not a crash.
        # The request's session is rolled back when it closes, so nothing is half-written.
        log.warning("value out of range on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        path = request.url.path
        code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
        status = 400 if family(path) == "seed003" else 422
        return error_response(path, code, "a value is out of range for its field", status, request=request)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, "APP_INTERNAL_ERROR", "internal error; it has been logged", 500)
