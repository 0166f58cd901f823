"""Group commit (db.group_commit): waiting write jobs share one transaction, a savepoint each;
a job's failure stays its own; on every database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.billing import quota
from backend.errors import ServiceError
from db import group_commit
from db.models import User
from db.session import get_engine
from tests.factories import make_user

pytestmark = pytest.mark.committed  # the writer thread makes real commits


@contextmanager
def writer_held(maker) -> Iterator[Future]:
    """Keep the writer busy with one job until the block ends, so what is submitted meanwhile
    waits in its queue and is taken as one batch."""
    started, release = threading.Event(), threading.Event()

    def hold(_s: Session) -> str:
        started.set()
        release.wait(10)
        return "held"

    first = group_commit.submit(maker, hold)
    assert started.wait(10)
    try:
        yield first
    finally:
        release.set()


@contextmanager
def commits_counted(settings) -> Iterator[list[int]]:
    count = [0]

    def on_commit(_conn: Any) -> None:
        count[0] += 1

    engine = get_engine(settings.resolved_database_url)
    event.listen(engine, "commit", on_commit)
    try:
        yield count
    finally:
        event.remove(engine, "commit", on_commit)


def grant(user_id: str, tokens: int, then: Callable[[Session], Any] | None = None) -> Callable[[Session], Any]:
    def job(s: Session) -> int:
        quota.grant(s, user_id=user_id, tokens=tokens, actor="test")
        if then is not None:
            then(s)
        return tokens

    return job


def refuse(_s: Session) -> None:
    raise ServiceError("TOKEN_NOT_ENOUGH", "refused after granting", 402)


def test_waiting_jobs_commit_as_one_transaction(maker, settings):
    user = make_user(maker, settings, tokens=0)
    with commits_counted(settings) as commits:
        with writer_held(maker) as first:
            futures = [group_commit.submit(maker, grant(user.id, 10 * (i + 1))) for i in range(5)]
        assert first.result(10) == "held"
        assert [f.result(10) for f in futures] == [10, 20, 30, 40, 50]
    assert commits[0] == 1  # the five waiting jobs together (the held one wrote nothing)
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 150 == quota.ledger_sum(s, user.id).tokens


def test_a_refused_job_keeps_nothing_and_the_others_commit(maker, settings):
    user = make_user(maker, settings, tokens=0)
    with commits_counted(settings) as commits:
        with writer_held(maker):
            futures = [group_commit.submit(maker, grant(user.id, 10 * (i + 1))) for i in range(2)]
            refused = group_commit.submit(maker, grant(user.id, 1000, then=refuse))  # granted, then refused
            futures.append(group_commit.submit(maker, grant(user.id, 30)))
        assert [f.result(10) for f in futures] == [10, 20, 30]
        with pytest.raises(ServiceError, match="refused after granting"):
            refused.result(10)
    assert commits[0] == 3  # the batch rolled back, then each job alone: three commits
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 60 == quota.ledger_sum(s, user.id).tokens


def test_a_database_error_runs_every_job_of_the_batch_alone(maker, settings):
    user = make_user(maker, settings, tokens=0)
    taken = make_user(maker, settings)

    def duplicate_username(s: Session) -> None:
        s.add(User(username=taken.username, password_hash="x", academy="CS"))
        s.flush()

    with commits_counted(settings) as commits:
        with writer_held(maker):
            futures = [group_commit.submit(maker, grant(user.id, 10)) for _ in range(3)]
            broken = group_commit.submit(maker, grant(user.id, 1000, then=duplicate_username))
            futures.append(group_commit.submit(maker, grant(user.id, 10)))
        assert [f.result(10) for f in futures] == [10, 10, 10, 10]
        with pytest.raises(IntegrityError):
            broken.result(10)
    # the batch rolled back, then the five again, each in its own transaction: four commits
    assert commits[0] == 4
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 40 == quota.ledger_sum(s, user.id).tokens


def test_a_job_cancelled_while_it_waits_never_runs(maker, settings):
    user = make_user(maker, settings, tokens=0)
    ran: list[str] = []

    def noted(name: str, tokens: int) -> Callable[[Session], int]:
        def job(s: Session) -> int:
            ran.append(name)
            return grant(user.id, tokens)(s)

        return job

    with writer_held(maker):
        cancelled = group_commit.submit(maker, noted("cancelled", 500))
        kept = group_commit.submit(maker, noted("kept", 5))
        assert cancelled.cancel()
    assert kept.result(10) == 5
    assert ran == ["kept"]
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 5


def test_write_awaits_the_result_and_raises_the_jobs_exception(maker, settings):
    user = make_user(maker, settings, tokens=0)

    async def both() -> None:
        assert await group_commit.write(maker, grant(user.id, 7)) == 7
        with pytest.raises(ServiceError):
            await group_commit.write(maker, refuse)

    asyncio.run(both())
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 7


def test_a_job_that_raises_a_base_exception_does_not_stop_the_writer(maker, settings):
    user = make_user(maker, settings, tokens=0)

    def exits(_s: Session) -> None:
        raise SystemExit("a job may not end the writer")

    with writer_held(maker):
        kept = group_commit.submit(maker, grant(user.id, 5))
        ended = group_commit.submit(maker, exits)
    assert kept.result(10) == 5
    with pytest.raises(SystemExit):
        ended.result(10)
    assert group_commit.submit(maker, grant(user.id, 6)).result(10) == 6  # still served
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 11
