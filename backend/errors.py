"""One error type for the whole domain; each API family renders it in its own envelope.

`code` is the seed-000 error name (the domain's vocabulary), `status` the HTTP status.
Seed-000 routes answer `{"code": code, "msg": message}`, seed-003 routes
`{"code": status, "message": message, "data": null}`, `/v1` the OpenAI error shape.
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400, **extra: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra


def not_found(code: str, message: str) -> ServiceError:
    return ServiceError(code, message, 404)


def conflict(code: str, message: str) -> ServiceError:
    return ServiceError(code, message, 409)


def forbidden(message: str = "permission denied") -> ServiceError:
    return ServiceError("PERMISSION_NOT_ALLOW", message, 403)


def unauthorized(message: str) -> ServiceError:
    return ServiceError("PERMISSION_NOT_ALLOW", message, 401)
