"""Several connections per model, with failover; the connections' health, shared by replicas.

A model may list several connections (`model_routes`: priority, weight); with routes it runs
on them instead of its own connection (`model_registry.resolve`). A request tries them in
`order()`: the highest priority group first, weighted at random inside a group, then the
next group; connections disabled (after a 401/403) are left out, cooling-down ones go last
(so a model whose connections all cool down still gets a try). `failover_stream()` runs a
chat stream over that order: a connection error, timeout, 5xx, 408, 409, 429, 401 or 403
before the first token moves on to the next connection, at most
`Settings.failover_max_attempts` tries; a refusal of the request itself (400, 413, 422)
is not retried; once a token reached the client, an error is the request's error (never
retried). The gateway (`gateway.pick_connection`, `ChatCall._connect`) orders the routes
when it plans the chat, admits it on the first connection's upstream slot and moves the slot
with each try (a connection whose slots are full is skipped: ConnectionBusy).

Health (`connection_health`, one row per connection, in the database so every replica sees
it): `Settings.connection_failure_threshold` failures in a row cool a connection down for
`Settings.connection_cooldown_seconds`; after the cooldown one more failure cools it down
again at once (half-open), a success resets it. A 401/403 (the upstream's own status, which
the provider carries as `upstream_status`) disables it with the reason (an admin re-enables
it on the Models page). Every attempt is a `connection_calls` row for the requests / errors
/ p50 latency (to the first token) of the last hour; the API server's sweeper deletes older ones.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend import audit
from backend.errors import ServiceError
from backend.providers.base import REQUEST_SENT, ProviderError, ProviderTimeout
from db.models import ConnectionCall, ConnectionHealth, ModelAiOnline, ModelInfo, ModelRoute
from db.session import rowcount

AUTH_STATUSES = (401, 403)
RETRY_STATUSES = (401, 403, 408, 409, 429)
ERROR = "MODEL_ERROR"

log = logging.getLogger("meteor.routing")


class ConnectionBusy(ProviderError):
    """A connection this process already sends its bound of calls to (`gateway.admit`): the
    failover skips it without counting a try or a failure."""

    status = 503


@dataclass(frozen=True)
class Route:
    connection_id: int
    priority: int
    weight: int
    cooldown_until: datetime | None = None
    disabled_reason: str | None = None

    def cooling(self, now: datetime) -> bool:
        return self.cooldown_until is not None and self.cooldown_until > now


# --- choosing (pure) ----------------------------------------------------------------------


def _weighted_shuffle(routes: list[Route], rng: random.Random) -> list[Route]:
    """Order by weighted random sampling without replacement (weight <= 0 counts as 1)."""
    pool = list(routes)
    out = []
    while pool:
        total = sum(max(r.weight, 1) for r in pool)
        pick = rng.uniform(0, total)
        acc = 0.0
        for i, r in enumerate(pool):
            acc += max(r.weight, 1)
            if pick <= acc:
                out.append(pool.pop(i))
                break
        else:  # rounding at the very end
            out.append(pool.pop())
    return out


def order(routes: list[Route], now: datetime, rng: random.Random | None = None) -> list[Route]:
    """The order to try `routes` in: healthy ones by priority (highest first), weighted at
    random inside a priority; then cooling-down ones, soonest back first; never disabled ones."""
    rng = rng or random.Random()
    usable = [r for r in routes if r.disabled_reason is None]
    healthy = [r for r in usable if not r.cooling(now)]
    cooling = sorted((r for r in usable if r.cooling(now)), key=lambda r: r.cooldown_until or now)
    ordered: list[Route] = []
    for priority in sorted({r.priority for r in healthy}, reverse=True):
        ordered += _weighted_shuffle([r for r in healthy if r.priority == priority], rng)
    return ordered + cooling


def failure_status(exc: BaseException) -> int | None:
    """The HTTP status behind a failure: the upstream's own (an HTTP error from the upstream
    is a 502 to our client, `upstream_status` keeps the 401), else the provider error's."""
    return getattr(exc, "upstream_status", None) or getattr(exc, "status", None)


def retryable(exc: BaseException) -> bool:
    """Whether a failure before the first token may move on to another connection: not a
    request the upstream refused as such (400, 413, 422: it would fail everywhere)."""
    if isinstance(exc, ProviderTimeout):
        return True
    if isinstance(exc, ProviderError):
        status = failure_status(exc) or 502
        return status >= 500 or status in RETRY_STATUSES
    return isinstance(exc, OSError | ConnectionError)


def _request_fault(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status not in RETRY_STATUSES


# --- routes of a model --------------------------------------------------------------------


def connections_for(session: Session, model_id: int) -> list[tuple[Route, ModelAiOnline]]:
    """The model's routes with their health and connection rows, in one query (empty: the
    model has no routes and uses its own connection)."""
    rows = session.execute(
        select(
            ModelRoute.connection_id,
            ModelRoute.priority,
            ModelRoute.weight,
            ConnectionHealth.cooldown_until,
            ConnectionHealth.disabled_reason,
            ModelAiOnline,
        )
        .join(ModelAiOnline, ModelAiOnline.ai_id == ModelRoute.connection_id)
        .outerjoin(ConnectionHealth, ConnectionHealth.connection_id == ModelRoute.connection_id)
        .where(ModelRoute.model_id == model_id)
        .order_by(ModelRoute.id)
    ).all()
    return [(Route(int(r[0]), int(r[1]), int(r[2]), r[3], r[4]), r[5]) for r in rows]


def routes_for(session: Session, model_id: int) -> list[Route]:
    """The model's routes with their health (empty: the model has no routes)."""
    return [route for route, _ in connections_for(session, model_id)]


def set_route(
    session: Session, *, model_id: int, connection_id: int, priority: int = 0, weight: int = 1, actor: str
) -> None:
    """Add a connection to a model, or change its priority / weight (audited)."""
    if session.get(ModelInfo, model_id) is None:
        raise ServiceError(ERROR, f"model {model_id} not found", 404)
    if session.get(ModelAiOnline, connection_id) is None:
        raise ServiceError(ERROR, f"connection {connection_id} not found", 404)
    if not 1 <= int(weight) <= 1000 or not -1000 <= int(priority) <= 1000:
        raise ServiceError(ERROR, "weight must be 1-1000 and priority -1000..1000", 422)
    row = session.scalar(
        select(ModelRoute).where(ModelRoute.model_id == model_id, ModelRoute.connection_id == connection_id)
    )
    if row is None:
        session.add(ModelRoute(model_id=model_id, connection_id=connection_id, priority=priority, weight=weight))
    else:
        row.priority, row.weight = priority, weight
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="set_model_route",
        target_type="model",
        target_id=model_id,
        detail={"connection_id": connection_id, "priority": priority, "weight": weight},
    )


def remove_route(session: Session, *, model_id: int, connection_id: int, actor: str) -> None:
    session.execute(
        delete(ModelRoute).where(ModelRoute.model_id == model_id, ModelRoute.connection_id == connection_id)
    )
    audit.record(
        session,
        actor=actor,
        action="remove_model_route",
        target_type="model",
        target_id=model_id,
        detail={"connection_id": connection_id},
    )


# --- health -------------------------------------------------------------------------------


def _health_row(session: Session, connection_id: int) -> None:
    """Make sure the connection has a health row (another replica may insert it at once)."""
    if session.get(ConnectionHealth, connection_id) is not None:
        return
    try:
        with session.begin_nested():
            session.add(ConnectionHealth(connection_id=connection_id, consecutive_failures=0))
    except IntegrityError:
        pass


def record_success(
    session: Session, connection_id: int, *, latency_ms: int | None, now: datetime | None = None
) -> None:
    now = now or datetime.now(UTC)
    session.execute(
        update(ConnectionHealth)
        .where(ConnectionHealth.connection_id == connection_id, ConnectionHealth.consecutive_failures != 0)
        .values(consecutive_failures=0, cooldown_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.add(ConnectionCall(connection_id=connection_id, at=now, ok=True, latency_ms=latency_ms))


def record_failure(
    session: Session,
    connection_id: int,
    *,
    status: int | None,
    reason: str,
    threshold: int,
    cooldown_seconds: int,
    latency_ms: int | None = None,
    now: datetime | None = None,
) -> str:
    """Count a failure: 'disabled' (401/403), 'cooldown' (threshold reached), 'counted', or
    'request' (a 4xx about the request itself, e.g. 400 or 413: an error of the last hour,
    but the connection works, so its health is unchanged)."""
    now = now or datetime.now(UTC)
    session.add(ConnectionCall(connection_id=connection_id, at=now, ok=False, latency_ms=latency_ms))
    if _request_fault(status):
        return "request"
    _health_row(session, connection_id)
    if status in AUTH_STATUSES:
        session.execute(
            update(ConnectionHealth)
            .where(ConnectionHealth.connection_id == connection_id)
            .values(disabled_reason=f"HTTP {status}: {reason}"[:255], disabled_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return "disabled"
    session.execute(
        update(ConnectionHealth)
        .where(ConnectionHealth.connection_id == connection_id)
        .values(consecutive_failures=ConnectionHealth.consecutive_failures + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    failures = session.execute(
        select(ConnectionHealth.consecutive_failures).where(ConnectionHealth.connection_id == connection_id)
    ).scalar_one()
    if failures >= max(threshold, 1):
        session.execute(
            update(ConnectionHealth)
            .where(ConnectionHealth.connection_id == connection_id)
            .values(cooldown_until=now + timedelta(seconds=cooldown_seconds))
            .execution_options(synchronize_session=False)
        )
        return "cooldown"
    return "counted"


def enable(session: Session, connection_id: int, *, actor: str) -> None:
    """Clear a disabling or a cooldown (an admin's decision, audited)."""
    session.execute(
        update(ConnectionHealth)
        .where(ConnectionHealth.connection_id == connection_id)
        .values(consecutive_failures=0, cooldown_until=None, disabled_reason=None, disabled_at=None)
        .execution_options(synchronize_session=False)
    )
    audit.record(session, actor=actor, action="enable_connection", target_type="connection", target_id=connection_id)


def health(session: Session, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every connection's state and its requests, errors and p50 latency of the last hour."""
    now = now or datetime.now(UTC)
    since = now - timedelta(hours=1)
    states = {h.connection_id: h for h in session.scalars(select(ConnectionHealth))}
    latencies: dict[int, list[int]] = {}
    counts: dict[int, list[int]] = {}
    for conn_id, ok, n in session.execute(
        select(ConnectionCall.connection_id, ConnectionCall.ok, func.count())
        .where(ConnectionCall.at >= since)
        .group_by(ConnectionCall.connection_id, ConnectionCall.ok)
    ):
        c = counts.setdefault(int(conn_id), [0, 0])
        c[0] += int(n)
        if not ok:
            c[1] += int(n)
    for conn_id, latency in session.execute(
        select(ConnectionCall.connection_id, ConnectionCall.latency_ms).where(
            ConnectionCall.at >= since, ConnectionCall.ok.is_(True), ConnectionCall.latency_ms.is_not(None)
        )
    ):
        if latency is not None:
            latencies.setdefault(int(conn_id), []).append(int(latency))
    out = []
    for conn in session.scalars(select(ModelAiOnline).order_by(ModelAiOnline.ai_name)):
        h = states.get(conn.ai_id)
        requests, errors = counts.get(conn.ai_id, [0, 0])
        lat = latencies.get(conn.ai_id)
        state = "ok"
        if h is not None and h.disabled_reason:
            state = "disabled"
        elif h is not None and h.cooldown_until is not None and h.cooldown_until > now:
            state = "cooldown"
        out.append(
            {
                "connection_id": conn.ai_id,
                "name": conn.ai_name,
                "state": state,
                "reason": h.disabled_reason if h is not None else None,
                "cooldown_until": h.cooldown_until.isoformat() if h is not None and h.cooldown_until else None,
                "consecutive_failures": h.consecutive_failures if h is not None else 0,
                "requests_1h": requests,
                "errors_1h": errors,
                "p50_ms_1h": int(statistics.median(lat)) if lat else None,
            }
        )
    return out


def sweep(session: Session, *, now: datetime | None = None) -> int:
    """Delete attempt rows older than the hour the Models page shows (the sweeper)."""
    since = (now or datetime.now(UTC)) - timedelta(hours=1, minutes=5)
    return rowcount(session.execute(delete(ConnectionCall).where(ConnectionCall.at < since))) or 0


# --- failover over a stream ---------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try of the failover loop (for tests and logs)."""

    connection_id: int
    ok: bool
    error: str | None = None


async def failover_stream(
    maker: sessionmaker,
    routes: list[Route],
    open_stream: Callable[[Route], AsyncIterator[Any]],
    *,
    max_attempts: int,
    threshold: int,
    cooldown_seconds: int,
    attempts: list[Attempt] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    rng: random.Random | None = None,
    ordered: bool = False,
    run_sync: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
) -> AsyncIterator[Any]:
    """Yield the items of the first connection (in `order()`, or as given when `ordered`)
    whose stream produces its first item; a retryable failure before that moves on (at most
    `max_attempts` tries; a ConnectionBusy is skipped, not counted). After the first item,
    failures propagate and are not retried. The provider's REQUEST_SENT marker is passed on
    once, as soon as the first try sends its request (from then on a cancelled call owes the
    prompt, as without failover); it is not a first item. An empty `routes` raises
    ServiceError 502; the last failure is re-raised when all fail.

    Health: one short write per try, run by `run_sync` (default a worker thread; the gateway
    passes its bounded database pool) while the stream goes on, never per item and never
    ahead of a token; the writes are awaited before the stream ends, so whoever reads the
    health after a call sees it."""
    run_sync = run_sync or asyncio.to_thread
    writes: list[asyncio.Future] = []

    def note(outcome: Callable[..., Any], connection_id: int, **fields: Any) -> None:
        writes.append(_spawn(run_sync(functools.partial(_record, maker, outcome, connection_id, **fields))))

    tried, sent = 0, False
    last: BaseException | None = None
    try:
        for route in routes if ordered else order(routes, now(), rng):
            if tried >= max(max_attempts, 1):
                break
            started = time.monotonic()
            iterator = aiter(open_stream(route))
            try:
                try:
                    first = await anext(iterator, None)
                    while first is REQUEST_SENT:
                        if not sent:
                            sent = True
                            yield REQUEST_SENT
                        first = await anext(iterator, None)
                except ConnectionBusy as exc:
                    last = last or exc
                    continue
                except Exception as exc:
                    tried += 1
                    last = exc
                    note(
                        record_failure, route.connection_id, status=failure_status(exc),
                        reason=str(exc)[:200] or type(exc).__name__, threshold=threshold,
                        cooldown_seconds=cooldown_seconds, latency_ms=int((time.monotonic() - started) * 1000),
                        now=now(),
                    )  # fmt: skip
                    if attempts is not None:
                        attempts.append(Attempt(route.connection_id, False, type(exc).__name__))
                    if not retryable(exc):
                        raise
                    continue
                tried += 1
                latency = int((time.monotonic() - started) * 1000)
                note(record_success, route.connection_id, latency_ms=latency, now=now())
                if attempts is not None:
                    attempts.append(Attempt(route.connection_id, True))
                if first is not None:
                    yield first
                async for item in iterator:  # after the first item: errors are the request's, never retried
                    yield item
                return
            finally:
                close = getattr(iterator, "aclose", None)
                if close is not None:
                    await close()
        if last is not None:
            raise last
        raise ServiceError(ERROR, "no usable connection for this model", 502)
    finally:
        if writes:
            await asyncio.wait(writes)


_writing: set[asyncio.Future] = set()


def _spawn(work: Awaitable[Any]) -> asyncio.Future:
    """A health write in the background (kept referenced until done; a failure is logged)."""
    task = asyncio.ensure_future(work)
    _writing.add(task)

    def done(t: asyncio.Future) -> None:
        _writing.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.warning("recording a connection's health failed: %s", type(t.exception()).__name__)

    task.add_done_callback(done)
    return task


def _record(maker: sessionmaker, outcome: Callable[..., Any], connection_id: int, **fields: Any) -> None:
    with maker.begin() as s:
        outcome(s, connection_id, **fields)


def list_routes(session: Session) -> list[dict[str, Any]]:
    """Every model's extra connections, by model name then priority."""
    rows = session.execute(
        select(
            ModelInfo.model_name,
            ModelAiOnline.ai_name,
            ModelRoute.model_id,
            ModelRoute.connection_id,
            ModelRoute.priority,
            ModelRoute.weight,
        )  # fmt: skip
        .join(ModelInfo, ModelInfo.model_id == ModelRoute.model_id)
        .join(ModelAiOnline, ModelAiOnline.ai_id == ModelRoute.connection_id)
        .order_by(ModelInfo.model_name, ModelRoute.priority.desc(), ModelRoute.id)
    ).all()
    return [
        {"model": r[0], "connection": r[1], "model_id": r[2], "connection_id": r[3], "priority": r[4], "weight": r[5]}
        for r in rows
    ]
