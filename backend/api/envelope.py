"""The three envelopes and the exception handlers that put every error into the right one.

- seed 000 (everything not below): `{"code": 0, "msg": ...}`, errors `{"code": "NAME", "msg": ...}`
- seed 003 (`/model/...`): `{"code": 200, "message": "Success", "data": ...}`, errors with
  the HTTP status as code and `data: null`
- OpenAI-compatible (`/v1/...`): `{"error": {"message", "type", "code"}}`
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    if path.startswith("/model/") or path == "/model":
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


def error_response(path: str, code: str, message: str, status: int, extra: dict | None = None) -> JSONResponse:
    fam = family(path)
    if fam == "seed003":
        body: dict[str, Any] = {"code": status, "message": message, "data": None}
    elif fam == "openai":
        body = {
            "error": {"message": message, "type": OPENAI_TYPES.get(status, "api_error"), "code": code, "param": None}
        }
    else:
        body = {"code": code, "msg": message, **(extra or {})}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


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
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = error_response(request.url.path, exc.code, exc.message, exc.status)
        if exc.extra.get("retry_after"):  # a rate limit (backend/services/rate_limits.py)
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        path = request.url.path
        code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
        status = 400 if family(path) == "seed003" else 422
        return error_response(path, code, describe_validation(exc), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        code = {404: "APP_NOT_FOUND_ERROR", 405: "APP_QUERY_METHOD_ERROR"}.get(exc.status_code, "APP_INTERNAL_ERROR")
        if exc.status_code == 400:  # a body that cannot even be decoded
            code = VALIDATION_CODES.get(path, "APP_QUERY_METHOD_ERROR")
            message = f"request body could not be read: {exc.detail}"
        elif exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(path, code, message, exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, "APP_INTERNAL_ERROR", "internal error; it has been logged", 500)
