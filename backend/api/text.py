"""Seed-000 text models (/textModel/chat, /textModel/stream) and /admin/console_test."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
