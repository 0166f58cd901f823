"""OpenAI-compatible answers (`/v1/...`): errors `{"error": {message, type, code, param}}`."""

from __future__ import annotations

from typing import Any, Literal

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


def answers(model: type[BaseModel], *statuses: int) -> dict[str, Any]:
    """Route keywords documenting a fixed answer (and these 4xx), sent as the route builds it."""
    return {"response_model": None, "responses": {200: {"model": model, "description": "success"}, **errors(*statuses)}}


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: Literal["meteor", "user"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
