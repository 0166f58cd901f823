"""Seed-003 conversations and messages (/model/message..., /model/conversation...)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
