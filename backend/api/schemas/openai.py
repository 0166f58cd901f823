"""OpenAI-compatible answers (`/v1/...`): errors `{"error": {message, type, code, param}}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from backend.api.schemas import documented


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for /v1 routes."""
    return documented(OpenAIError, *statuses)
