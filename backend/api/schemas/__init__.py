"""Typed request models and documented answers per API family: `seed000`, `seed003`,
`openai`. What `/openapi.json` states is what the server enforces: each request model is
the one the route validates with (a FastAPI body parameter, or `parse_body` where a
seed-003 route decides between shapes or answers errors in the body), its `Field` limits
are the services' rules, and every route lists the 4xx it answers, in its family's envelope
(backend/api/envelope.py).

`documented(error_model, *statuses)` builds a route's `responses=`; `json_body(*models)` an
`openapi_extra` for a body the route parses itself (so the schema still names the model);
`sent_as` turns a request model into the service's typed update; `finish` corrects what
FastAPI adds on its own (see there).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from backend import security
from backend.accounts import service as accounts

Update = TypeVar("Update", bound=BaseModel)

# The account rules (backend/accounts/service.py) where every family states them:
SignInPassword = Annotated[str, Field(min_length=1, max_length=128)]  # what a sign-in may try (imported accounts)
NewPasswordText = Annotated[str, Field(min_length=accounts.PASSWORD_MIN, max_length=security.BCRYPT_MAX_BYTES)]
# an admin's edit: "" (or absent) keeps the password, anything else is a new one
KeptOrNewPassword = Literal[""] | NewPasswordText | None

ERROR_DESCRIPTIONS = {
    400: "bad request (seed 003: any invalid input)",
    401: "missing, invalid, expired or revoked token, or wrong name / password",
    402: "not enough tokens or picTimes",
    403: "not allowed for this account (disabled, not an admin / super admin, not the owner)",
    404: "no such account, row or model",
    405: "method not allowed (the Allow header lists the path's methods)",
    409: "the name is taken",
    413: "the request body is larger than this endpoint's limit",
    415: "the upload is not a kind this endpoint reads",
    422: "invalid input (lengths, ranges, password rules)",
    429: "too many requests (failed logins, rate limits; Retry-After says when to come back)",
}

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    405: {"Allow": {"description": "the methods this path has, comma-separated", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds until the next try may succeed", "schema": {"type": "integer"}}},
}


def documented(error_model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these 4xx, each in `error_model` (the family's envelope)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": error_model, "description": ERROR_DESCRIPTIONS[status]}
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        responses[status] = entry
    return responses


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """`schema` with its `$ref`s to `$defs` replaced by the definitions (an inline request
    body cannot point into a model's own `$defs`)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `model` as a request body (aliases, limits), self-contained."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _inline(schema, schema.get("$defs", {}))


def json_body(
    *models: type[BaseModel] | dict[str, Any], description: str | None = None, required: bool = True
) -> dict[str, Any]:
    """`openapi_extra` for a JSON body the route validates itself with one of `models`."""
    schemas = [m if isinstance(m, dict) else model_schema(m) for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    body: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def sent_as(data: BaseModel, update: type[Update], **spelled: str) -> Update:
    """The fields the client sent in `data` as the service's update model (whose
    `model_dump(exclude_unset=True)` is what changes); `spelled` names another spelling of a
    field that counts when the field itself was not sent (`aiol_id="ai_id"`)."""
    sent = {name: getattr(data, name) for name in data.model_fields_set if name in update.model_fields}
    for name, other in spelled.items():
        if name not in sent and other in data.model_fields_set:
            sent[name] = getattr(data, other)
    return update(**sent)


def finish(spec: dict[str, Any], family_of: Callable[[str], str]) -> dict[str, Any]:
    """Correct FastAPI's own additions to the spec: it documents a 422 in its `{detail}`
    shape on every route with parameters, but seed-003 answers bad input with a 400 (so no
    422 there) and every other family in its envelope (declared on the routers); every
    path answers 405 (with Allow) to a method it does not have. Idempotent."""
    for path, operations in spec.get("paths", {}).items():
        seed003 = family_of(path) == "seed003"
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if seed003:
                responses.pop("422", None)
            responses.setdefault("405", {"description": ERROR_DESCRIPTIONS[405], "headers": _HEADERS[405]})
    components = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's `{detail}`, when nothing uses it now
        others = {k: v for k, v in components.items() if k != name}
        if name in components and f"#/components/schemas/{name}" not in json.dumps([spec["paths"], others]):
            del components[name]
    return spec
