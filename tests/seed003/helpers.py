"""Assertions shared by the seed-003 tests."""

from __future__ import annotations

from sqlalchemy import func, select


def count(maker, model, *where) -> int:
    """Rows of `model` (matching `where`) as the database has them now."""
    with maker() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def ok(response) -> object:
    """The `data` of a seed-003 success; fails with the body otherwise."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 200 and body["message"] == "Success", body
    return body["data"]


def err(response, status: int) -> str:
    """The message of a seed-003 error with this status (envelope checked)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["data"] is None, body
    return body["message"]
