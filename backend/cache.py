"""A small process-local cache with a time to live, for the rows every chat reads and admins
rarely change (a model's price, a user's rate limits, a resolved model): reading them costs
queries per chat. A write through the owning service forgets the cache of this process at
once; other processes see it within `TTL_SECONDS`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")

TTL_SECONDS = 2.0
MAX_ENTRIES = 10_000

_every: list[TtlCache] = []


class TtlCache(Generic[T]):
    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._lock = threading.Lock()
        self._items: dict[Hashable, tuple[float, T]] = {}
        _every.append(self)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value of `key`, or `load()` (stored for `ttl` seconds)."""
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        self.put(key, value)
        return value

    def peek(self, key: Hashable) -> T | None:
        """The cached, unexpired value of `key`, or None."""
        with self._lock:
            hit = self._items.get(key)
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    def put(self, key: Hashable, value: T) -> None:
        with self._lock:
            if len(self._items) >= MAX_ENTRIES:
                self._items.clear()
            self._items[key] = (self.clock() + self.ttl, value)

    def forget(self) -> None:
        with self._lock:
            self._items.clear()


def forget_on_write(cache: TtlCache, *, flushed: tuple[type, ...], executed: tuple[type, ...] = ()) -> None:
    """Forget `cache` in this process whenever a flush adds, changes or deletes an instance
    of `flushed`, or an ORM INSERT / UPDATE / DELETE statement targets a class of `executed`."""
    from sqlalchemy import event
    from sqlalchemy.orm import ORMExecuteState, Session

    def after_flush(session: Session, _context: object) -> None:
        if any(isinstance(obj, flushed) for obj in (*session.new, *session.dirty, *session.deleted)):
            cache.forget()

    def statement(state: ORMExecuteState) -> None:
        writes = state.is_update or state.is_delete or state.is_insert
        if writes and state.bind_mapper is not None and issubclass(state.bind_mapper.class_, executed):
            cache.forget()

    event.listen(Session, "after_flush", after_flush)
    if executed:
        event.listen(Session, "do_orm_execute", statement)


def forget_all() -> None:
    """Empty every cache of this process (tests: each test starts from the database)."""
    for cache in _every:
        cache.forget()
