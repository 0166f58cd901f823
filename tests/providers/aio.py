"""Driving the async provider streams from plain test functions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from backend.providers.base import RequestSent

T = TypeVar("T")


def run(awaitable: Awaitable[T]) -> T:
    """Run one coroutine in a fresh event loop."""

    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


async def _drain(stream: AsyncIterator[Any], into: list[Any]) -> list[Any]:
    async for item in stream:
        if not isinstance(item, RequestSent):
            into.append(item)
    return into


def items(stream: AsyncIterator[Any], into: list[Any] | None = None) -> list[Any]:
    """Every event of a provider stream but the REQUEST_SENT marker (appended to `into` as
    they arrive, so a test sees what came before an error)."""
    return run(_drain(stream, [] if into is None else into))


async def first_text(stream: AsyncIterator[Any]) -> Any:
    """The first event after REQUEST_SENT."""
    async for item in stream:
        if not isinstance(item, RequestSent):
            return item
    raise AssertionError("the stream ended before any text")
