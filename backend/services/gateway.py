"""The text gateway: the one path every chat takes (seed endpoints, /v1, the playground).

    call = gateway.start_chat(maker, settings, caller=..., dialog=..., model_name=...)
    for event in call:          # str deltas, then one ChatResult
        ...

`start_chat` resolves the model and reserves the most the call can cost (prompt tokens +
maximum output tokens) in one short committed transaction, so too little quota is
TOKEN_NOT_ENOUGH (402) before any upstream request. Iterating streams from the provider
with no transaction open. Afterwards one short transaction settles the reservation to the
real usage and writes the usage row. If the upstream fails, times out, or the consumer
stops iterating (`close()`, a client that went away), only the completion tokens that were
delivered are charged and the rest is released; a crash leaves the reservation to the
sweeper. Admin console tests (`Caller.for_admin`) reserve nothing and are charged to no
user. Upstream keys never appear in a message or a log line.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.errors import ServiceError
from backend.providers.base import ChatProvider, ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.security import mask_secret
from backend.services import model_registry, pricing, quota, rate_limits, usage
from backend.services.model_registry import ResolvedModel
from backend.services.personas import PersonaParams, build_messages
from db.models import ModelConversation

log = logging.getLogger("meteor.gateway")

MAX_OUTPUT_TOKENS = 8192
LOCAL_PROVIDERS = ("embedded", "ollama")
# Provider statuses that mean something to the client (too long, busy); the rest is a 502.
PASSED_STATUSES = (400, 413, 429, 502, 503, 504)


@dataclass(frozen=True)
class Caller:
    """Who pays: a user (charged) or an admin running a console test (charged to nobody)."""

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


def _record_usage(maker: sessionmaker, call: ChatCall, **fields: Any) -> None:
    with maker.begin() as s:
        call.record_usage(s, **fields)


class ChatCall:
    """One chat in flight: iterate it for str deltas and, last, one ChatResult.

    Iterating raises ChatFailed (MODEL_ERROR 502/504) when the upstream fails; `close()`
    before the end settles what was delivered. Call `prime()` to pull the first event
    eagerly, so a failure before the first byte surfaces before a response is started."""

    def __init__(
        self,
        *,
        maker: sessionmaker,
        settings: Settings,
        caller: Caller,
        model: ResolvedModel,
        provider: ChatProvider,
        request: ChatRequest,
        prompt_estimate: int,
        reservation_id: str | None,
        request_id: str,
        started: float,
        conversation_id: int | None,
        record_history: bool,
        user_text: str,
        title_writer: Callable[[str, str], str | None] | None,
    ) -> None:
        self.maker = maker
        self.settings = settings
        self.caller = caller
        self.model = model
        self.provider = provider
        self.request = request
        self.prompt_estimate = prompt_estimate
        self.reservation_id = reservation_id
        self.request_id = request_id
        self.started = started
        self.conversation_id = conversation_id
        self.record_history = record_history
        self.user_text = user_text
        self.title_writer = title_writer
        self.result: ChatResult | None = None
        self._pending: list[str | ChatResult] = []
        self._gen = self._events()
        self._began = False
        self._finished = False

    @property
    def max_tokens(self) -> int:
        return self.request.max_tokens

    def record_usage(self, session: Session, **fields: Any) -> None:
        """Write this call's usage row (who, which model) with the given measurements."""
        usage.record(
            session,
            request_id=self.request_id,
            user_id=self.caller.user_id,
            academy=self.caller.academy,
            admin_name=self.caller.admin_name,
            model=self.model.name,
            provider=self.model.provider,
            **fields,
        )

    # --- iteration --------------------------------------------------------------------

    def __iter__(self) -> ChatCall:
        return self

    def __next__(self) -> str | ChatResult:
        self._began = True
        if self._pending:
            return self._pending.pop()
        return next(self._gen)

    def prime(self) -> None:
        """Pull the first event now; upstream errors before the first byte raise here."""
        if not self._pending:
            self._pending.append(next(self))

    def close(self) -> None:
        """Stop early: charge only what was delivered, release the rest (idempotent)."""
        if not self._began:
            self._began = True
            self._finish_failed("cancelled", "", None)
            return
        self._gen.close()
        if not self._finished:  # closed before the generator body ever ran
            self._finish_failed("cancelled", "", None)

    def run(self) -> ChatResult:
        """Consume the whole chat (the non-streaming endpoints)."""
        try:
            for event in self:
                if isinstance(event, ChatResult):
                    return event
        finally:
            self.close()
        raise ServiceError("MODEL_ERROR", "the model ended without an answer", 502)

    def _events(self) -> Generator[str | ChatResult, None, None]:
        delivered: list[str] = []
        final_usage: Usage | None = None
        first_at: float | None = None
        upstream = None
        try:
            upstream = self.provider.stream(self.request)
            for item in upstream:
                if isinstance(item, Usage):
                    final_usage = item
                    continue
                if not item:
                    continue
                if first_at is None:
                    first_at = time.monotonic()
                yield item
                delivered.append(item)  # reached only once the consumer asked for more
        except GeneratorExit:
            _close_quietly(upstream)
            self._finish_failed("cancelled", "".join(delivered), first_at)
            raise
        except ProviderError as exc:
            _close_quietly(upstream)
            cause = _cause(exc, self.model.api_key)
            status = 504 if isinstance(exc, ProviderTimeout) else (exc.status if exc.status in PASSED_STATUSES else 502)
            charged = self._finish_failed("error", "".join(delivered), first_at, error=cause)
            raise ChatFailed(
                f"model {self.model.name!r} failed: {cause}", status, charged_tokens=charged, request_id=self.request_id
            ) from None
        except Exception as exc:
            _close_quietly(upstream)
            log.error("chat %s on %s crashed: %s", self.request_id, self.model.name, type(exc).__name__)
            charged = self._finish_failed(
                "error", "".join(delivered), first_at, error=f"internal: {type(exc).__name__}"
            )
            raise ChatFailed(
                f"model {self.model.name!r} failed: internal error ({type(exc).__name__})",
                502,
                charged_tokens=charged,
                request_id=self.request_id,
            ) from None
        self.result = self._finish_ok("".join(delivered), final_usage, first_at)
        yield self.result

    # --- settlement -------------------------------------------------------------------

    def _timings(self, first_at: float | None) -> tuple[int, int | None]:
        now = time.monotonic()
        latency = int((now - self.started) * 1000)
        ttft = None if first_at is None else int((first_at - self.started) * 1000)
        return latency, ttft

    def _finish_ok(self, content: str, final_usage: Usage | None, first_at: float | None) -> ChatResult:
        self._finished = True
        if final_usage is None:  # providers promise a Usage; count ourselves if one did not
            final_usage = Usage(self.prompt_estimate, _completion_tokens(self.provider, content))
        prompt, completion = final_usage.prompt_tokens, final_usage.completion_tokens
        latency, ttft = self._timings(first_at)
        charged = 0
        with self.maker.begin() as s:
            if self.reservation_id is not None:
                settled = quota.settle(
                    s,
                    reservation_id=self.reservation_id,
                    tokens=prompt + completion,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
                if settled is None:
                    log.warning("chat %s: reservation was already closed (swept?)", self.request_id)
                else:
                    charged = settled.tokens
            self.record_usage(
                s,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=latency,
                ttft_ms=ttft,
                status="ok",
            )
        conversation_id = self._record_history(content, prompt, completion)
        return ChatResult(
            request_id=self.request_id,
            model=self.model.name,
            provider=self.model.provider,
            content=content,
            prompt_tokens=prompt,
            completion_tokens=completion,
            charged_tokens=charged,
            max_tokens=self.request.max_tokens,
            latency_ms=latency,
            ttft_ms=ttft,
            conversation_id=conversation_id,
            charged_to_user=self.caller.user_id is not None,
        )

    def _finish_failed(self, status: str, delivered: str, first_at: float | None, error: str | None = None) -> int:
        """Settle to the delivered completion tokens (release all when none); returns the charge."""
        if self._finished:
            return 0
        self._finished = True
        completion = _completion_tokens(self.provider, delivered)
        latency, ttft = self._timings(first_at)
        charged = 0
        try:
            with self.maker.begin() as s:
                if self.reservation_id is not None:
                    if completion:
                        settled = quota.settle(
                            s, reservation_id=self.reservation_id, tokens=completion, completion_tokens=completion
                        )
                        charged = settled.tokens if settled else 0
                    else:
                        quota.release(s, reservation_id=self.reservation_id, note=status)
                self.record_usage(
                    s,
                    prompt_tokens=0,
                    completion_tokens=completion,
                    latency_ms=latency,
                    ttft_ms=ttft,
                    status=status,
                    error=error,
                )
        except Exception:  # the sweeper releases the reservation if this write fails
            log.exception("chat %s: could not settle after %s", self.request_id, status)
        if error:
            log.warning("chat %s on %s: %s (%s)", self.request_id, self.model.name, status, error)
        return charged

    def _record_history(self, reply: str, prompt: int, completion: int) -> int | None:
        if not self.record_history or self.caller.user_id is None:
            return self.conversation_id
        try:
            from backend.services import conversations  # written by the conversations issue
        except ImportError:
            return self.conversation_id
        # A title writer may call a model: it runs before the transaction opens, never inside.
        title = None
        if self.conversation_id is None and self.title_writer is not None:
            try:
                title = self.title_writer(self.user_text, reply)
            except Exception:
                log.warning("chat %s: the title writer failed; using the first words", self.request_id)
        try:
            with self.maker.begin() as s:
                conversation_id = conversations.record_exchange(
                    s,
                    user_id=self.caller.user_id,
                    conversation_id=self.conversation_id,
                    model_name=self.model.name,
                    user_text=self.user_text,
                    reply_text=reply,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    title_writer=lambda _user, _reply: title,
                )
        except Exception:  # the answer is paid for; losing its history line must not lose the answer
            log.exception("chat %s: could not record the exchange in the conversation history", self.request_id)
            return self.conversation_id
        if self.conversation_id is None and title is None and self.settings.model_titles:
            write_title_later(
                self.maker,
                self.settings,
                model_name=self.model.name,
                conversation_id=conversation_id,
                user_text=self.user_text,
                reply=reply,
            )
        return conversation_id


def _close_quietly(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            log.debug("closing an upstream stream failed", exc_info=True)


def _last_user_text(dialog: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(dialog) if m["role"] == "user"), "")


def _check_conversation(session: Session, conversation_id: int, user_id: str | None) -> None:
    if user_id is None:
        raise ServiceError("APP_QUERY_METHOD_ERROR", "console tests have no conversation history", 422)
    owner = session.scalar(select(ModelConversation.user_id).where(ModelConversation.id == conversation_id))
    if owner != user_id:
        raise ServiceError("APP_NOT_FOUND_ERROR", f"conversation {conversation_id} not found", 404)


def start_chat(
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
    title_writer: Callable[[str, str], str | None] | None = None,
) -> ChatCall:
    """Resolve the model, reserve the most the chat can cost, and return the call to iterate.

    Raises (nothing reserved): MODEL_ERROR 404/403 for an unknown or disabled model,
    TOKEN_NOT_ENOUGH 402, 413 when the dialog does not fit the model's context, 422 for bad
    parameter overrides, 404 for a conversation that is not the caller's."""
    started = time.monotonic()
    request_id = uuid.uuid4().hex
    with maker() as s:
        model = model_registry.resolve(
            s, settings, name=model_name, user_id=caller.user_id, admin=caller.user_id is None
        )
        if conversation_id is not None:
            _check_conversation(s, conversation_id, caller.user_id)
    params = _apply_overrides(model.params, overrides)
    try:
        provider = model_registry.open_provider(model, settings)
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

    call_fields: dict[str, Any] = dict(
        maker=maker,
        settings=settings,
        caller=caller,
        model=model,
        provider=provider,
        request=request,
        prompt_estimate=prompt_estimate,
        request_id=request_id,
        started=started,
        conversation_id=conversation_id,
        record_history=record_history,
        user_text=_last_user_text(dialog),
        title_writer=title_writer,
    )
    reservation_id = None
    if caller.user_id is not None:
        ttl = timedelta(seconds=settings.reservation_ttl_seconds + model.timeout)
        try:
            with maker.begin() as s:
                rate_limits.admit(  # quota policy: 429 + Retry-After before anything is reserved
                    s, settings, user_id=caller.user_id, academy=caller.academy, api_key_id=caller.api_key_id,
                    tokens=prompt_estimate + limit,
                )  # fmt: skip
                price = pricing.model_price(s, model.model_id)  # quota policy: settled at this same price
                reservation_id = quota.reserve(
                    s,
                    user_id=caller.user_id,
                    tokens=pricing.reserve_amount(price, prompt_estimate, limit),  # quota policy
                    ttl=ttl,
                    request_id=request_id,
                    model=model.name,
                    price=price,  # quota policy
                )
        except ServiceError as exc:
            refused = ChatCall(reservation_id=None, **call_fields)
            refused._finished = True
            _record_usage(
                maker,
                refused,
                prompt_tokens=0,
                completion_tokens=0,
                latency_ms=int((time.monotonic() - started) * 1000),
                ttft_ms=None,
                status="error",
                error=f"{exc.code}: {exc.message}",
            )
            raise
    return ChatCall(reservation_id=reservation_id, **call_fields)


def chat(maker: sessionmaker, settings: Settings, **kwargs: Any) -> ChatResult:
    """Start a chat and consume it whole: the non-streaming path."""
    return start_chat(maker, settings, **kwargs).run()


# --- titles written by the model -------------------------------------------------------------

TITLE_INSTRUCTION = (
    "Write a title of at most eight words for the conversation below. Answer with the title only.\n\n"
    "User: {user}\nAssistant: {reply}"
)
TITLE_MAX_TOKENS = 24
TITLE_BACKLOG = 8
TITLES_CALLER = Caller(admin_name="system:titles")
_title_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titles")
_title_backlog = threading.BoundedSemaphore(TITLE_BACKLOG)


def write_title(
    maker: sessionmaker, settings: Settings, *, model_name: str, conversation_id: int, user_text: str, reply: str
) -> str:
    """Ask the conversation's model for a title and store it, unless the conversation was
    renamed meanwhile. Charged to no user (a usage row as `system:titles`). Returns the title."""
    from backend.services import conversations

    placeholder = conversations.make_title(user_text)
    prompt = TITLE_INSTRUCTION.format(user=user_text[:600], reply=reply[:600])
    written = chat(
        maker,
        settings,
        caller=TITLES_CALLER,
        dialog=[{"role": "user", "content": prompt}],
        model_name=model_name,
        max_tokens=TITLE_MAX_TOKENS,
        record_history=False,
    ).content
    title = conversations.make_title(user_text, reply, lambda _u, _r: written)
    with maker.begin() as s:
        s.execute(
            update(ModelConversation)
            .where(ModelConversation.id == conversation_id, ModelConversation.title == placeholder)
            .values(title=title)
        )
    return title


def write_title_later(maker: sessionmaker, settings: Settings, **job: Any) -> Future | None:
    """Title a new conversation in the background, so the answer never waits for it; the
    first words stay when the model fails or when too many titles are already waiting."""
    if not _title_backlog.acquire(blocking=False):
        return None

    def run() -> None:
        try:
            write_title(maker, settings, **job)
        except Exception as exc:
            log.info("conversation %s keeps its first-words title: %s", job.get("conversation_id"), exc)
        finally:
            _title_backlog.release()

    return _title_pool.submit(run)
