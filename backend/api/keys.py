"""Per-user API keys for /v1: create, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
