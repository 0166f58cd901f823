"""Seed-000 voice (/voiceModel/chat) and picture (/PictureToTextModel/chat) recognition."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
