"""Seed-003 models, personas and online connections (/model/manage..., /model/ol/manage...)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
