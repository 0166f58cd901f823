"""The text gateway: the one path every chat takes (seed endpoints, /v1, the playground).

    call = await gateway.start_chat(maker, settings, caller=..., dialog=..., model_name=...)
    async for event in call:    # str deltas, then one ChatResult
        ...

Everything runs in the event loop. Planning reads in a bounded pool of threads (`offload`,
one hop, and none when the caller planned already); the two writes are group-committed
(`db.group_commit`: one writer thread runs every waiting reservation and settlement in one
transaction), so a lecture hall's chats do not queue on SQLite's write lock one transaction at
a time:

1. plan (read only, usually no query at all: the key check and the resolved model are
   cached, `cache.TTL_SECONDS`): resolve the model and the caller's conversation, count the
   prompt (`plan_chat`; the API routes do their key / token check here too);
2. admit (no I/O): the per-upstream concurrency bound (`METEOR_UPSTREAM_CONCURRENCY`; a
   full upstream is UPSTREAM_BUSY, 503 with Retry-After, nothing reserved) — the place a
   rate limit goes (`admit`);
3. reserve (one commit): the most the call can cost (`pricing.reserve_amount` at the model's price), so too little
   quota is TOKEN_NOT_ENOUGH (402) before any upstream request;
4. stream from the provider's async iterator, no transaction open, no thread hop per piece
   (a model with routes: `routing.failover_stream` over its connections, in the order
   `pick_connection` chose; retried only before the first token, the reservation stays the
   same, so the call is charged once, on the connection that served it);
5. settle (one commit): the reservation to the real usage, the usage row and the
   conversation history (in a savepoint: losing a history line never loses the charge).

How a call ends decides what is charged. Finished: the upstream's usage. The upstream
failed: only the completion tokens delivered before the failure. Cancelled (the consumer
stopped: `aclose()`, a client that went away, a non-streaming client that disconnected):
once the request has been sent upstream, the prompt is owed, plus the completion tokens
delivered; before that, nothing. A crash leaves the reservation to the sweeper. Admin console
tests (`Caller.for_admin`) reserve nothing and are charged to no user. Upstream keys never
appear in a message or a log line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.accounts import rate_limits
from backend.accounts.identity import Principal
from backend.billing import pricing, quota, usage
from backend.catalog import registry as model_registry
from backend.catalog import routing
from backend.catalog.personas import build_messages
from backend.catalog.registry import ResolvedModel
from backend.config import Settings
from backend.errors import ServiceError
from backend.providers.base import ChatProvider, ChatRequest, ProviderError, ProviderTimeout, RequestSent, Usage
from backend.providers.params import PersonaParams
from backend.providers.upstream import PerLoop
from backend.security import mask_secret
from db import group_commit
from db.models import ModelConversation
from db.session import reading

log = logging.getLogger("meteor.gateway")

T = TypeVar("T")
MAX_OUTPUT_TOKENS = 8192
LOCAL_PROVIDERS = ("embedded", "ollama")
# Provider statuses that mean something to the client (too long, busy); the rest is a 502.
PASSED_STATUSES = (400, 413, 429, 502, 503, 504)
# Threads for the database hops: about the connection pool's size (db.session: 10 + 30).
DB_THREADS = 32
BUSY_RETRY_AFTER_SECONDS = 1


# --- the database offload ----------------------------------------------------------------------

_db_threads: PerLoop[anyio.CapacityLimiter] = PerLoop(lambda: anyio.CapacityLimiter(DB_THREADS))


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """Run a short synchronous database transaction in the bounded pool (one hop). Not
    cancellable half-way: a settlement that has started always finishes."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=_db_threads.get())


# --- callers and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who pays: a user (charged) or an admin running a console test (charged to nobody).
    Not a second identity: what the gateway needs of a `Principal` (`Caller.of`) plus what a
    request adds (the /v1 API key, for its rate limit); system callers (titles) have no account."""

    user_id: str | None = None
    academy: str | None = None
    admin_name: str | None = None
    api_key_id: int | None = None  # quota policy: a /v1 request's key, for its rate limit

    @classmethod
    def for_user(cls, user: Any) -> Caller:
        return cls(user_id=user.id, academy=user.academy)

    @classmethod
    def for_admin(cls, admin: Any) -> Caller:
        return cls(admin_name=admin.name)

    @classmethod
    def of(cls, principal: Principal) -> Caller:
        if principal.is_admin:
            return cls(admin_name=principal.name)
        return cls(user_id=principal.id, academy=principal.academy)

    @property
    def is_admin(self) -> bool:
        return self.user_id is None


@dataclass(frozen=True)
class ChatResult:
    """The end of a successful chat. `charged_tokens` is what the ledger took (0 for admins)."""

    request_id: str
    model: str
    provider: str
    content: str
    prompt_tokens: int
    completion_tokens: int
    charged_tokens: int
    max_tokens: int
    latency_ms: int
    ttft_ms: int | None
    conversation_id: int | None
    charged_to_user: bool

    @property
    def billed_tokens(self) -> int:
        """consume_token: what the caller paid, or for an admin what it would have cost."""
        return self.charged_tokens if self.charged_to_user else self.prompt_tokens + self.completion_tokens

    @property
    def billed_prompt_tokens(self) -> int:
        return min(self.prompt_tokens, self.billed_tokens)

    @property
    def billed_completion_tokens(self) -> int:
        return self.billed_tokens - self.billed_prompt_tokens

    @property
    def finish_reason(self) -> str:
        return "length" if self.completion_tokens >= self.max_tokens else "stop"


class ChatFailed(ServiceError):
    """An upstream failure after the call started: MODEL_ERROR with what was charged."""

    def __init__(self, message: str, status: int, *, charged_tokens: int, request_id: str) -> None:
        super().__init__("MODEL_ERROR", message, status)
        self.charged_tokens = charged_tokens
        self.request_id = request_id


class UpstreamBusy(ServiceError):
    """The upstream already carries its bound of concurrent requests: 503 with Retry-After."""

    def __init__(self, model: str, bound: int) -> None:
        super().__init__(
            "UPSTREAM_BUSY",
            f"model {model!r} is busy ({bound} requests in flight); retry in a moment",
            503,
            retry_after=BUSY_RETRY_AFTER_SECONDS,
        )


class ClientGone(Exception):
    """The client of a non-streaming request went away before the answer was ready."""


def _scrub(text: str, secret: str | None) -> str:
    """Remove an upstream key from a message, whatever the provider put in it."""
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, mask_secret(secret) or "…")
    return text


def _cause(exc: Exception, secret: str | None) -> str:
    """What went wrong upstream, for a message: the error's text (or its type), key removed."""
    return _scrub(str(exc) or type(exc).__name__, secret)


def _apply_overrides(params: PersonaParams, overrides: dict[str, Any] | None) -> PersonaParams:
    if not overrides:
        return params
    values = {**params.set_fields(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return PersonaParams.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "parameters"
        raise ServiceError("APP_QUERY_METHOD_ERROR", f"invalid {where}: {first.get('msg', 'invalid')}", 422) from None


def _completion_tokens(provider: ChatProvider, text: str) -> int:
    """Tokens in delivered text, by the provider's own tokenizer (without the turn overhead)."""
    if not text:
        return 0
    try:
        count_text = getattr(provider, "count_text_tokens", None)
        if count_text is not None:
            return max(int(count_text(text)), 1)
        full = provider.count_tokens([{"role": "assistant", "content": text}])
        empty = provider.count_tokens([{"role": "assistant", "content": ""}])
        return max(full - empty, 1)
    except Exception:  # a tokenizer failure must not stop the settlement
        log.exception("token counting failed; charging by characters")
        return max(len(text) // 4, 1)


# --- seams: the connection, the amount reserved, admission -------------------------------------


def pick_connection(
    model: ResolvedModel, settings: Settings
) -> tuple[ResolvedModel, ChatProvider, list[ResolvedModel]]:
    """The one place a connection is chosen: the connection to try first, its provider (one
    pooled client per connection), and the ones to fail over to, in order. A model without
    routes: itself, no others. With routes: `routing.order` (highest priority group weighted
    at random, cooling-down connections last, disabled ones never); a connection that cannot
    be opened (its URL refused) is passed over. Blocking (the URL check): off the loop."""
    if not model.routes:
        return model, model_registry.open_provider(model, settings), []
    by_id = {m.connection_id: m for m in model.routes}
    ordered = [
        by_id[r.connection_id] for r in routing.order([m.route for m in model.routes if m.route], datetime.now(UTC))
    ]
    if not ordered:
        raise ServiceError("MODEL_ERROR", f"every connection of model {model.name!r} is disabled", 502)
    failure: Exception | None = None
    for i, first in enumerate(ordered):
        try:
            return first, model_registry.open_provider(first, settings), ordered[i + 1 :]
        except (ProviderError, ValueError, ServiceError) as exc:
            log.warning("model %s: connection %s cannot be opened: %s", model.name, first.connection_id, exc)
            failure = failure or exc
    assert failure is not None
    raise failure


class _Slots:
    """In-flight requests per upstream connection in this process (not shared between worker
    processes: the bound is per worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple, int] = {}

    def take(self, key: tuple, bound: int) -> bool:
        with self._lock:
            used = self._used.get(key, 0)
            if bound > 0 and used >= bound:
                return False
            self._used[key] = used + 1
            return True

    def give_back(self, key: tuple) -> None:
        with self._lock:
            left = self._used.get(key, 0) - 1
            if left > 0:
                self._used[key] = left
            else:
                self._used.pop(key, None)

    def in_flight(self, key: tuple) -> int:
        with self._lock:
            return self._used.get(key, 0)


upstream_slots = _Slots()


def connection_key(model: ResolvedModel) -> tuple | None:
    """What the concurrency bound counts by: the upstream connection (None: not bounded here;
    the embedded engine has its own queue)."""
    if model.provider == "embedded":
        return None
    return (model.provider, model.base_url)


class _Seat:
    """The upstream slot of a call over several connections: held on the connection being
    tried, moved by the failover (never two at once); calling it gives the slot back."""

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._key: tuple | None = None

    def move_to(self, key: tuple | None) -> bool:
        if key == self._key:
            return True
        if key is not None and not upstream_slots.take(key, self._bound):
            return False
        self()
        self._key = key
        return True

    def __call__(self) -> None:
        key, self._key = self._key, None
        if key is not None:
            upstream_slots.give_back(key)


def admit(plan: ChatPlan, settings: Settings) -> Callable[[], None] | None:
    """Admission, before anything is reserved: the per-upstream concurrency bound (a rate
    limit check goes here too). Returns how to give the slot back; raises UpstreamBusy.
    A model with routes takes the slot of the first of its connections with room (the
    failover moves it to the connection it tries: `ChatCall._connect`)."""
    if plan.model.route is not None:
        seat = _Seat(settings.upstream_concurrency)
        if any(seat.move_to(connection_key(m)) for m in (plan.model, *plan.fallbacks)):
            return seat
        raise UpstreamBusy(plan.model.name, settings.upstream_concurrency)
    key = connection_key(plan.model)
    if key is None:
        return None
    bound = settings.upstream_concurrency
    if not upstream_slots.take(key, bound):
        raise UpstreamBusy(plan.model.name, bound)
    return lambda: upstream_slots.give_back(key)


# --- planning: the read-only hop -------------------------------------------------------------


@dataclass
class ChatPlan:
    """A chat resolved and counted, not yet admitted or reserved. `model`, `provider` and
    `request` are the connection tried first; the failover moves them to the one it tries
    (so the usage row, the key scrubbing and the token counting follow the connection)."""

    caller: Caller
    model: ResolvedModel
    provider: ChatProvider
    request: ChatRequest
    prompt_estimate: int
    request_id: str
    started: float
    conversation_id: int | None
    record_history: bool
    user_text: str
    fallbacks: list[ResolvedModel] = field(default_factory=list)  # a model with routes: the others, in order


@dataclass(frozen=True)
class ChatTarget:
    """What the database says about a chat: the model, and that the conversation is the caller's."""

    model: ResolvedModel
    conversation_id: int | None


def _check_conversation(session: Session, conversation_id: int, user_id: str | None) -> None:
    if user_id is None:
        raise ServiceError("APP_QUERY_METHOD_ERROR", "console tests have no conversation history", 422)
    owner = reading(session).scalar(select(ModelConversation.user_id).where(ModelConversation.id == conversation_id))
    if owner != user_id:
        raise ServiceError("APP_NOT_FOUND_ERROR", f"conversation {conversation_id} not found", 404)


def find_target(
    session: Session, settings: Settings, *, caller: Caller, model_name: str | None, conversation_id: int | None
) -> ChatTarget:
    """The database reads of a chat (in the caller's session): the model (404/403 when unknown
    or disabled) and the conversation (404 when not the caller's)."""
    model = model_registry.resolve(session, settings, name=model_name, user_id=caller.user_id, admin=caller.is_admin)
    if conversation_id is not None:
        _check_conversation(session, conversation_id, caller.user_id)
    return ChatTarget(model, conversation_id)


def _last_user_text(dialog: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(dialog) if m["role"] == "user"), "")


def plan_chat(
    settings: Settings,
    target: ChatTarget,
    *,
    caller: Caller,
    dialog: list[dict[str, str]],
    max_tokens: int | None = None,
    overrides: dict[str, Any] | None = None,
    record_history: bool = True,
    started: float | None = None,
) -> ChatPlan:
    """Open the provider and count the prompt (no database; blocking: run it off the loop,
    after the session of `find_target` is closed). Raises (nothing reserved): MODEL_ERROR 502
    when the connection cannot be opened, 413 when the dialog does not fit the model's
    context, 422 for bad parameter overrides."""
    started = time.monotonic() if started is None else started
    model = target.model
    params = _apply_overrides(model.params, overrides)
    try:
        model, provider, fallbacks = pick_connection(model, settings)
    except (ProviderError, ValueError) as exc:
        cause = _cause(exc, model.api_key)
        raise ServiceError("MODEL_ERROR", f"model {model.name!r} cannot be opened: {cause}", 502) from None
    messages = build_messages(model.system, model.examples, dialog)
    try:
        prompt_estimate = int(provider.count_tokens(messages))
    except ProviderError as exc:
        cause = _cause(exc, model.api_key)
        raise ServiceError("MODEL_ERROR", f"model {model.name!r} failed: {cause}", exc.status) from None

    limit = max_tokens or (params.num_predict if params.num_predict and params.num_predict > 0 else None)
    limit = min(limit or settings.default_max_tokens, MAX_OUTPUT_TOKENS)
    if model.provider in LOCAL_PROVIDERS and params.num_ctx:
        room = params.num_ctx - prompt_estimate
        if room < 1:
            raise ServiceError(
                "MODEL_ERROR",
                f"the dialog ({prompt_estimate} tokens) does not fit model {model.name!r}'s context "
                f"of {params.num_ctx} tokens",
                413,
            )
        limit = min(limit, room)
    params = params.model_copy(update={"num_predict": limit})
    request = ChatRequest(
        messages=messages, model=model.base_model, params=params, max_tokens=limit, timeout=model.timeout
    )
    return ChatPlan(
        caller=caller,
        model=model,
        provider=provider,
        request=request,
        prompt_estimate=prompt_estimate,
        request_id=uuid.uuid4().hex,
        started=started,
        conversation_id=target.conversation_id,
        record_history=record_history,
        user_text=_last_user_text(dialog),
        fallbacks=fallbacks,
    )


# --- reserving: the first commit ---------------------------------------------------------------


def _reserve(s: Session, settings: Settings, plan: ChatPlan) -> str | ServiceError:
    """The reservation (a group-commit job), or why there is none — the refusal's usage row
    is written instead, in the same commit. With Redis rate-limit buckets the admitted event
    lives in Redis: when another job's failure makes the batch run again job by job, it is
    counted twice (stricter for one window, never looser)."""
    ttl = timedelta(seconds=settings.reservation_ttl_seconds + plan.model.timeout)
    caller = plan.caller
    assert caller.user_id is not None  # only a user's chat reserves (open_chat)
    limited = rate_limits.buckets(s, user_id=caller.user_id, academy=caller.academy, api_key_id=caller.api_key_id)
    try:
        # A refusal writes nothing before it raises, except an admitted rate-limit event (then
        # a savepoint takes it back); a savepoint costs more than the rest of the job.
        with s.begin_nested() if limited else nullcontext():
            # quota policy: the rate limit (429 + Retry-After) before anything is reserved; the
            # price read here is stored on the reservation, so settlement charges this same price
            rate_limits.admit(
                s,
                settings,
                user_id=caller.user_id,
                academy=caller.academy,
                api_key_id=caller.api_key_id,
                tokens=plan.prompt_estimate + plan.request.max_tokens,
            )
            price = pricing.model_price(s, plan.model.model_id)
            return quota.reserve(
                s,
                user_id=caller.user_id,
                tokens=pricing.reserve_amount(price, plan.prompt_estimate, plan.request.max_tokens),
                ttl=ttl,
                request_id=plan.request_id,
                model=plan.model.name,
                price=price,
            )
    except ServiceError as exc:
        _usage_row(
            s,
            plan,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=int((time.monotonic() - plan.started) * 1000),
            ttft_ms=None,
            status="error",
            error=f"{exc.code}: {exc.message}",
        )
        return exc


def _usage_row(session: Session, plan: ChatPlan, **fields: Any) -> None:
    usage.record(
        session,
        request_id=plan.request_id,
        user_id=plan.caller.user_id,
        academy=plan.caller.academy,
        admin_name=plan.caller.admin_name,
        model=plan.model.name,
        provider=plan.model.provider,
        connection_id=plan.model.connection_id,
        **fields,
    )


async def open_chat(maker: sessionmaker, settings: Settings, plan: ChatPlan | Callable[[], ChatPlan]) -> ChatCall:
    """Plan the chat (when given the function that does: one hop to a database thread), admit
    it and reserve the most it can cost (one group commit). Raises (nothing charged): what
    planning raises, UPSTREAM_BUSY 503, RATE_LIMITED 429, TOKEN_NOT_ENOUGH 402."""
    if not isinstance(plan, ChatPlan):
        plan = await offload(plan)
    give_back = admit(plan, settings)
    reservation_id = None
    try:
        if plan.caller.user_id is not None:
            reserved = await group_commit.write(maker, partial(_reserve, settings=settings, plan=plan))
            if isinstance(reserved, ServiceError):
                raise reserved
            reservation_id = reserved
    except BaseException:
        if give_back is not None:
            give_back()
        raise
    return ChatCall(maker, settings, plan, reservation_id, give_back)


async def start_chat(
    maker: sessionmaker,
    settings: Settings,
    *,
    caller: Caller,
    dialog: list[dict[str, str]],
    model_name: str | None = None,
    max_tokens: int | None = None,
    overrides: dict[str, Any] | None = None,
    conversation_id: int | None = None,
    record_history: bool = True,
) -> ChatCall:
    """Resolve the model, admit the chat, reserve the most it can cost, and return the call
    to iterate (`open_chat`: one hop to plan, one group commit to reserve).

    Raises (nothing reserved): MODEL_ERROR 404/403 for an unknown or disabled model,
    TOKEN_NOT_ENOUGH 402, UPSTREAM_BUSY 503, 413 when the dialog does not fit the model's
    context, 422 for bad parameter overrides, 404 for a conversation that is not the caller's."""
    started = time.monotonic()

    def plan() -> ChatPlan:
        with maker() as s:
            target = find_target(s, settings, caller=caller, model_name=model_name, conversation_id=conversation_id)
        return plan_chat(
            settings,
            target,
            caller=caller,
            dialog=dialog,
            max_tokens=max_tokens,
            overrides=overrides,
            record_history=record_history,
            started=started,
        )

    return await open_chat(maker, settings, plan)


async def chat(maker: sessionmaker, settings: Settings, **kwargs: Any) -> ChatResult:
    """Start a chat and consume it whole: the non-streaming path."""
    return await (await start_chat(maker, settings, **kwargs)).run()


# --- the call in flight ------------------------------------------------------------------------


class ChatCall:
    """One chat in flight: iterate it (`async for`) for str deltas and, last, one ChatResult.

    Iterating raises ChatFailed (MODEL_ERROR 502/504) when the upstream fails; `aclose()`
    before the end settles as cancelled. `prime()` pulls the first event eagerly, so a failure
    before the first byte surfaces before a response is started. A delta counts as delivered
    once the consumer asks for the next event (or at once, for `run()`)."""

    def __init__(
        self,
        maker: sessionmaker,
        settings: Settings,
        plan: ChatPlan,
        reservation_id: str | None,
        give_back: Callable[[], None] | None,
    ) -> None:
        self.maker = maker
        self.settings = settings
        self.plan = plan
        self.reservation_id = reservation_id
        self.result: ChatResult | None = None
        self._upstream: Any = None
        self._sent = False
        self._delivered: list[str] = []
        self._handed: str | None = None
        self._count_at_once = False
        self._pending: list[str | ChatResult] = []
        self._first_at: float | None = None
        self._usage: Usage | None = None
        self._finished = False
        # the upstream slot comes back however the call ends, even if it is never closed
        self._give_back = weakref.finalize(self, give_back) if give_back is not None else None
        self._seat = give_back if isinstance(give_back, _Seat) else None
        self._connections = {m.connection_id: m for m in (plan.model, *plan.fallbacks)}
        self._providers = {plan.model.connection_id: plan.provider}

    # the plan's fields, as the routes and the playground read them
    @property
    def request_id(self) -> str:
        return self.plan.request_id

    @property
    def model(self) -> ResolvedModel:
        return self.plan.model

    @property
    def conversation_id(self) -> int | None:
        return self.plan.conversation_id

    @property
    def prompt_estimate(self) -> int:
        return self.plan.prompt_estimate

    @property
    def max_tokens(self) -> int:
        return self.plan.request.max_tokens

    # --- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> ChatCall:
        return self

    async def __anext__(self) -> str | ChatResult:
        if self._pending:
            return self._pending.pop()
        if self._handed is not None:
            self._delivered.append(self._handed)
            self._handed = None
        if self._finished:
            raise StopAsyncIteration
        if self._upstream is None:
            self._upstream = aiter(self._open_upstream())
        try:
            while True:
                item = await anext(self._upstream)
                if isinstance(item, RequestSent):
                    self._sent = True
                elif isinstance(item, Usage):
                    self._usage = item
                elif item:
                    self._sent = True
                    if self._first_at is None:
                        self._first_at = time.monotonic()
                    if self._count_at_once:
                        self._delivered.append(item)
                    else:
                        self._handed = item
                    return item
        except StopAsyncIteration:
            self.result = await self._finish_ok()
            return self.result
        except ProviderError as exc:
            cause = _cause(exc, self.model.api_key)
            status = 504 if isinstance(exc, ProviderTimeout) else (exc.status if exc.status in PASSED_STATUSES else 502)
            charged = await self._finish_failed("error", error=cause)
            raise ChatFailed(
                f"model {self.model.name!r} failed: {cause}", status, charged_tokens=charged, request_id=self.request_id
            ) from None
        except Exception as exc:
            log.error("chat %s on %s crashed: %s", self.request_id, self.model.name, type(exc).__name__)
            charged = await self._finish_failed("error", error=f"internal: {type(exc).__name__}")
            raise ChatFailed(
                f"model {self.model.name!r} failed: internal error ({type(exc).__name__})",
                502,
                charged_tokens=charged,
                request_id=self.request_id,
            ) from None

    def _open_upstream(self) -> AsyncIterator[Any]:
        """The provider's stream; for a model with routes, the failover over its connections."""
        if self.plan.model.route is None:
            return self.plan.provider.stream(self.plan.request)
        return routing.failover_stream(
            self.maker,
            [m.route for m in self._connections.values() if m.route is not None],
            self._connect,
            ordered=True,  # pick_connection's order, which admission followed
            max_attempts=self.settings.failover_max_attempts,
            threshold=self.settings.connection_failure_threshold,
            cooldown_seconds=self.settings.connection_cooldown_seconds,
            run_sync=offload,
        )

    async def _connect(self, route: routing.Route) -> AsyncIterator[Any]:
        """One try of the failover: the connection's upstream slot (ConnectionBusy when full:
        skipped), its provider, its stream."""
        plan, model = self.plan, self._connections[route.connection_id]
        if self._seat is not None and not self._seat.move_to(connection_key(model)):
            raise routing.ConnectionBusy(f"connection {model.connection_id} is at its bound of requests")
        provider = self._providers.get(model.connection_id)
        if provider is None:
            try:
                provider = await offload(model_registry.open_provider, model, self.settings)
            except (ValueError, ServiceError) as exc:
                raise ProviderError(f"cannot open the connection: {exc}") from None
        plan.model, plan.provider = model, provider
        plan.request = replace(plan.request, model=model.base_model, timeout=model.timeout)
        # every provider's stream is an async generator (typed as an AsyncIterator in the Protocol)
        async with aclosing(provider.stream(plan.request)) as events:  # type: ignore[type-var]
            async for event in events:
                yield event

    async def prime(self) -> None:
        """Pull the first event now; upstream errors before the first byte raise here."""
        if not self._pending:
            event = await self.__anext__()
            self._pending.append(event)

    async def aclose(self) -> None:
        """Stop early (idempotent): the prompt is owed once the request went upstream, plus
        the completion tokens delivered; the rest of the reservation flows back."""
        if self._finished:  # every streamed response closes its call; most have ended by then
            return
        with anyio.CancelScope(shield=True):
            upstream, self._upstream = self._upstream, None
            if upstream is not None:
                try:
                    await upstream.aclose()
                except BaseException:  # noqa: BLE001 - closing a broken stream may fail; settle anyway
                    log.debug("closing an upstream stream failed", exc_info=True)
            await self._finish_failed("cancelled")

    async def run(self) -> ChatResult:
        """Consume the whole chat (the non-streaming endpoints): every piece the upstream
        sent counts as delivered."""
        self._count_at_once = True
        try:
            async for event in self:
                if isinstance(event, ChatResult):
                    return event
        finally:
            await self.aclose()
        raise ServiceError("MODEL_ERROR", "the model ended without an answer", 502)

    # --- settlement ----------------------------------------------------------------------

    def _timings(self) -> tuple[int, int | None]:
        now = time.monotonic()
        latency = int((now - self.plan.started) * 1000)
        ttft = None if self._first_at is None else int((self._first_at - self.plan.started) * 1000)
        return latency, ttft

    def _end(self) -> None:
        self._finished = True
        self._upstream = None
        if self._give_back is not None:
            self._give_back()

    async def _finish_ok(self) -> ChatResult:
        self._end()
        content = "".join(self._delivered) + (self._handed or "")
        self._delivered, self._handed = [content], None
        final = self._usage
        if final is None:  # providers promise a Usage; count ourselves if one did not
            final = Usage(self.prompt_estimate, _completion_tokens(self.plan.provider, content))
        prompt, completion = final.prompt_tokens, final.completion_tokens
        latency, ttft = self._timings()
        with anyio.CancelScope(shield=True):
            charged, conversation_id, new_conversation = await self._settle_ok(
                content, prompt, completion, latency, ttft
            )
        if new_conversation and self.settings.model_titles:
            write_title_later(
                self.maker,
                self.settings,
                model_name=self.model.name,
                conversation_id=conversation_id,
                user_text=self.plan.user_text,
                reply=content,
            )
        return ChatResult(
            request_id=self.request_id,
            model=self.model.name,
            provider=self.model.provider,
            content=content,
            prompt_tokens=prompt,
            completion_tokens=completion,
            charged_tokens=charged,
            max_tokens=self.max_tokens,
            latency_ms=latency,
            ttft_ms=ttft,
            conversation_id=conversation_id,
            charged_to_user=not self.plan.caller.is_admin,
        )

    async def _settle_ok(
        self, content: str, prompt: int, completion: int, latency: int, ttft: int | None
    ) -> tuple[int, int | None, bool]:
        """The second commit: settle, the usage row, the history line (in a savepoint)."""
        history = self.plan.record_history and not self.plan.caller.is_admin

        def settle(s: Session, with_history: bool) -> tuple[int, int | None]:
            charged = self._settle(s, prompt + completion, prompt, completion, "ok", latency, ttft, None)
            return charged, (self._record_history(s, content, prompt, completion) if with_history else None)

        try:
            charged, conversation_id = await group_commit.write(self.maker, partial(settle, with_history=history))
        except Exception:
            if not history:
                raise
            log.exception("chat %s: settling with its history line failed; settling without", self.request_id)
            charged, conversation_id = await group_commit.write(self.maker, partial(settle, with_history=False))
        if conversation_id is None:
            return charged, self.conversation_id, False
        return charged, conversation_id, self.conversation_id is None

    def _settle(
        self,
        s: Session,
        tokens: int,
        prompt: int,
        completion: int,
        status: str,
        latency: int,
        ttft: int | None,
        error: str | None,
    ) -> int:
        charged = 0
        if self.reservation_id is not None:
            if tokens > 0:
                settled = quota.settle(
                    s,
                    reservation_id=self.reservation_id,
                    tokens=tokens,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    connection_id=self.model.connection_id,
                )
                if settled is None:
                    log.warning("chat %s: reservation was already closed (swept?)", self.request_id)
                else:
                    charged = settled.tokens
            else:
                quota.release(s, reservation_id=self.reservation_id, note=status)
        _usage_row(
            s,
            self.plan,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency,
            ttft_ms=ttft,
            status=status,
            error=error,
        )
        return charged

    def _record_history(self, s: Session, reply: str, prompt: int, completion: int) -> int | None:
        from backend.chat import conversations  # conversations call back into titles, not here

        assert self.plan.caller.user_id is not None  # only a user's chat has a history (_settle_ok)
        try:
            with s.begin_nested():
                return conversations.record_exchange(
                    s,
                    user_id=self.plan.caller.user_id,
                    conversation_id=self.conversation_id,
                    model_name=self.model.name,
                    user_text=self.plan.user_text,
                    reply_text=reply,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
        except ServiceError:  # e.g. the conversation was deleted meanwhile: the answer stands
            log.info("chat %s: could not record the exchange in the conversation history", self.request_id)
            return None

    async def _finish_failed(self, status: str, error: str | None = None) -> int:
        """Settle an interrupted call; returns the charge. `cancelled` owes the prompt once it
        was sent; an upstream `error` only the delivered completion tokens."""
        if self._finished:
            return 0
        self._end()
        delivered = "".join(self._delivered)
        completion = _completion_tokens(self.plan.provider, delivered)
        prompt = self.prompt_estimate if status == "cancelled" and self._sent else 0
        latency, ttft = self._timings()
        charged = 0
        try:
            with anyio.CancelScope(shield=True):
                charged = await group_commit.write(
                    self.maker,
                    lambda s: self._settle(s, prompt + completion, prompt, completion, status, latency, ttft, error),
                )
        except Exception:  # the sweeper releases the reservation if this write fails
            log.exception("chat %s: could not settle after %s", self.request_id, status)
        if error:
            log.warning("chat %s on %s: %s (%s)", self.request_id, self.model.name, status, error)
        return charged


# --- a non-streaming request whose client may go away ------------------------------------------


async def run_watched(call: ChatCall, receive: Callable[[], Any]) -> ChatResult:
    """`call.run()`, stopped as soon as the client disconnects (ASGI `receive` says
    `http.disconnect`): the call then settles as cancelled and ClientGone is raised."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    running = asyncio.ensure_future(call.run())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({running, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await call.aclose()
    if running.cancelled():
        raise ClientGone
    return running.result()


# --- titles written by the model -------------------------------------------------------------

TITLE_INSTRUCTION = (
    "Write a title of at most eight words for the conversation below. Answer with the title only.\n\n"
    "User: {user}\nAssistant: {reply}"
)
TITLE_MAX_TOKENS = 24
TITLE_BACKLOG = 8
TITLES_CALLER = Caller(admin_name="system:titles")
_titles_lock = threading.Lock()
_titles_running: set[asyncio.Task] = set()


async def write_title(
    maker: sessionmaker, settings: Settings, *, model_name: str, conversation_id: int, user_text: str, reply: str
) -> str:
    """Ask the conversation's model for a title and store it, unless the conversation was
    renamed meanwhile. Charged to no user (a usage row as `system:titles`). Returns the title."""
    from backend.chat import conversations

    placeholder = conversations.make_title(user_text)
    prompt = TITLE_INSTRUCTION.format(user=user_text[:600], reply=reply[:600])
    answer = await chat(
        maker,
        settings,
        caller=TITLES_CALLER,
        dialog=[{"role": "user", "content": prompt}],
        model_name=model_name,
        max_tokens=TITLE_MAX_TOKENS,
        record_history=False,
    )
    title = conversations.make_title(user_text, answer.content, lambda _u, _r: answer.content)

    def store() -> None:
        with maker.begin() as s:
            s.execute(
                update(ModelConversation)
                .where(ModelConversation.id == conversation_id, ModelConversation.title == placeholder)
                .values(title=title)
            )

    await offload(store)
    return title


def write_title_later(maker: sessionmaker, settings: Settings, **job: Any) -> asyncio.Task | None:
    """Title a new conversation in the background (a task on this event loop), so the answer
    never waits for it; the first words stay when the model fails or when too many titles
    are already being written."""
    with _titles_lock:
        if len(_titles_running) >= TITLE_BACKLOG:
            return None

        async def run() -> None:
            try:
                await write_title(maker, settings, **job)
            except Exception as exc:
                log.info("conversation %s keeps its first-words title: %s", job.get("conversation_id"), exc)

        task = asyncio.get_running_loop().create_task(run())
        _titles_running.add(task)
    task.add_done_callback(_title_done)
    return task


def _title_done(task: asyncio.Task) -> None:
    with _titles_lock:
        _titles_running.discard(task)
