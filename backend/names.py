"""The one naming rule for what people name: accounts, admins and vouchers."""

from __future__ import annotations

import re

from backend.errors import ServiceError

NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


def check_name(name: str, code: str, what: str = "name") -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise ServiceError(code, f"{what} must be 1-64 characters without control characters", 422)
    return name
