"""The playground's logic, as plain functions the Gradio Blocks only wire.

Who may use it. Only signed-in Meteor accounts, identified on every request by one of:
- `Authorization: Bearer <access token>` (a user's or an admin's, as the API issues them);
- the playground session cookie, a signed token of type `playground_session` that
  `session_token` issues after a sign-in link was checked;
- a sign-in link `?token=…`: the dashboard's short-lived token of type `playground`
  (`dashboard.auth.playground_token`), exchanged for the cookie exactly once
  (`redeem_link`: its JWT id goes into `playground_links`, so every API server agrees).
Tokens become a `Principal` in `accounts.identity` (as for the API and the dashboard).
Every check compares the token's version with the account's `token_version` in the
database, so a logout or password change on the dashboard or the API ends the playground
session too; a disabled user is refused.

Who pays. A user's chats go through the text gateway (reserve, stream, settle, one usage
row) and are kept as their seed-003 conversation. An admin chats as an admin console
test: charged to no user, a usage row carrying the admin's name, and no history (the
gateway's admin path). Voice and pictures charge a user's quota (a picTime per picture),
so they are for users; an admin gets a clear refusal (403).

Stop. A chat in flight is registered under its Gradio session; `stop_chat` closes it, the
gateway charges only the completion tokens already delivered and releases the rest, and
the part of the answer that was shown is kept in the conversation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from backend import security
from backend.accounts import identity
from backend.accounts.identity import Principal
from backend.billing import quota
from backend.chat import gateway
from backend.chat.gateway import Caller, ChatCall, ChatResult
from backend.config import Settings
from backend.errors import ServiceError
from backend.media import recognize as media
from db.models import ModelInfo, PlaygroundLink, UsageRecord

log = logging.getLogger("meteor.playground")

SESSION_KIND = "playground_session"
LINK_KIND = "playground"
VOICE_SUFFIXES = {".wav", ".pcm", ".raw"}


# --- who is signed in --------------------------------------------------------------------


def _load(session: Session, kind: str, account_id: str) -> Principal | None:
    """The account as it is now; None when it is gone or (a user) not active."""
    return identity.load_principal(session, kind, account_id, active=True)


def authenticate(
    session: Session, settings: Settings, *, bearer: str | None = None, cookie: str | None = None
) -> Principal | None:
    """The account behind a request's Bearer access token or playground session cookie
    (a valid, unrevoked token of an active account), or None: no anonymous use."""
    if bearer:
        account = identity.resolve_token(session, settings, bearer, purpose="access")
        if account is not None:
            return account
    if cookie:
        return identity.resolve_token(session, settings, cookie, purpose=SESSION_KIND)
    return None


def _link(session: Session, settings: Settings, token: str) -> tuple[Principal, dict[str, Any]] | None:
    try:
        account, claims = identity.verify_token(session, settings, token, purpose=LINK_KIND)
    except ServiceError:
        return None
    return (account, claims) if claims.get("jti") else None


def check_link_token(session: Session, settings: Settings, token: str) -> Principal | None:
    """The account a dashboard sign-in link (`?token=`, type `playground`) signs in, or None
    (forged, expired, revoked, or already used). Does not use the link up: see `redeem_link`."""
    found = _link(session, settings, token)
    if found is None or session.get(PlaygroundLink, str(found[1]["jti"])) is not None:
        return None
    return found[0]


def link_account(session: Session, settings: Settings, token: str) -> Principal | None:
    """The account a genuine, unexpired, unrevoked link is for, used or not (so a browser
    already signed in by it can be told apart from one replaying it)."""
    found = _link(session, settings, token)
    return found[0] if found is not None else None


def redeem_link(session: Session, settings: Settings, token: str) -> Principal | None:
    """Use a sign-in link up and return the account it signs in; None when it is not valid or
    was already used, here or on another API server (the link's JWT id is inserted into
    `playground_links`; a second insert of the same id fails on its primary key, whichever
    server tries). Expired rows are swept first. The caller commits."""
    found = _link(session, settings, token)
    if found is None:
        return None
    account, claims = found
    now = datetime.now(UTC)
    # Swept by primary key after a plain read: a range DELETE takes InnoDB gap locks that
    # deadlock against the concurrent inserts of other servers redeeming at the same moment.
    expired = session.scalars(
        select(PlaygroundLink.jti).where(PlaygroundLink.expires_at < now - timedelta(minutes=1)).limit(500)
    ).all()
    if expired:
        session.execute(delete(PlaygroundLink).where(PlaygroundLink.jti.in_(expired)))
    try:
        with session.begin_nested():
            session.add(
                PlaygroundLink(
                    jti=str(claims["jti"])[:64], used_at=now, expires_at=datetime.fromtimestamp(claims["exp"], UTC)
                )
            )
    except IntegrityError:
        return None
    return account


def session_token(settings: Settings, account: Principal) -> str:
    """The playground session cookie's value: signed, bound to the account's token version,
    valid as long as an access token."""
    return security.issue_token(
        settings,
        subject=account.id,
        role=account.kind,
        kind=SESSION_KIND,
        version=account.token_version,
        ttl=timedelta(minutes=settings.access_token_minutes),
        identity=account.identity,
    )


def account_for(session: Session, subject: str | None) -> Principal:
    """The account behind the subject the auth dependency handed Gradio; 401 when it is
    missing or the account is gone or disabled."""
    kind, _, account_id = (subject or "").partition(":")
    account = _load(session, kind, account_id) if account_id else None
    if account is None:
        raise ServiceError("TOKEN_INVALID", "sign in to use the playground", 401)
    return account


# --- what the page shows -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoices:
    names: list[str]
    default: str | None


def model_choices(session: Session, account: Principal) -> ModelChoices:
    """The enabled models (`model_info.disable = 0`) the account may chat with, by name:
    shared ones and a user's own; an admin sees every enabled model. The default model
    (`is_default`) is preselected, else the first."""
    stmt = select(ModelInfo.model_name, ModelInfo.is_default).where(ModelInfo.disable == 0)
    if not account.is_admin:
        stmt = stmt.where(or_(ModelInfo.user_id.is_(None), ModelInfo.user_id == account.id))
    rows = session.execute(stmt.order_by(ModelInfo.model_name)).all()
    names = [name for name, _ in rows]
    default = next((name for name, is_default in rows if is_default), names[0] if names else None)
    return ModelChoices(names, default)


def balance(session: Session, account: Principal) -> quota.Balance | None:
    """A user's balance; None for an admin (charged to no one)."""
    return None if account.is_admin else quota.balance(session, account.id)


# --- chat --------------------------------------------------------------------------------


def block_text(content: Any) -> str:
    """The text of a Gradio 6 message `content`: a string or a list of content blocks
    (`{"type": "text", "text": …}`; file blocks carry no text)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list | tuple):
        return "\n".join(t for t in (block_text(part) for part in content) if t)
    return ""


def dialog_from_history(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """The chatbot's messages as the gateway's dialog: user / assistant turns with text."""
    dialog = []
    for message in history or []:
        role = message.get("role")
        text = block_text(message.get("content")).strip()
        if role in ("user", "assistant") and text:
            dialog.append({"role": role, "content": text})
    return dialog


def _message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


@dataclass
class ChatProgress:
    """One step of a streamed chat, for the page to render."""

    history: list[dict[str, Any]]
    reply: str
    conversation_id: int | None
    done: bool = False
    result: ChatResult | None = None
    balance: quota.Balance | None = None
    error: ServiceError | None = None
    stopped: StopOutcome | None = None


@dataclass(frozen=True)
class StopOutcome:
    """What a stopped chat cost: the delivered completion tokens, and where its part went."""

    request_id: str
    charged_tokens: int
    delivered: str
    conversation_id: int | None
    balance: quota.Balance | None


@dataclass
class LiveChat:
    """A chat in flight. `next_event` and `stop` take turns under one lock, so a stop waits
    for at most the one token being produced, then closes the upstream call. `delivered`
    holds what reached the page (`mark_shown`): a piece produced while the consumer was being
    cancelled never did, and is not kept."""

    maker: sessionmaker
    account: Principal
    call: ChatCall
    user_text: str
    conversation_id: int | None
    delivered: list[str] = field(default_factory=list)
    outcome: StopOutcome | None = None
    finished: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def next_event(self) -> str | ChatResult | None:
        """The next delta or the final result; None when the chat ended (or was stopped)."""
        async with self.lock:
            if self.outcome is not None or self.finished:
                return None
            try:
                event = await anext(self.call)
            except StopAsyncIteration:
                self.finished = True
                return None
            except Exception:  # the gateway settled the failure itself
                self.finished = True
                raise
            # a cancellation (Gradio's Stop cancels the task) leaves the call to `stop`
            if not isinstance(event, str):
                self.finished = True
            return event

    def mark_shown(self, piece: str) -> bool:
        """Record a piece as shown on the page, unless the chat was stopped meanwhile (then
        the piece is dropped, so the page and the kept history agree)."""
        if self.outcome is not None:
            return False
        self.delivered.append(piece)
        return True

    async def stop(self) -> StopOutcome | None:
        """Close the call: the gateway charges the prompt (it was sent) and what was
        delivered, and releases the rest; the part of the answer that was shown is kept in the
        user's conversation. Idempotent; None when the chat had already finished normally."""
        with anyio.CancelScope(shield=True):
            async with self.lock:
                if self.outcome is not None:
                    return self.outcome
                if self.finished:
                    return None
                await self.call.aclose()
                self.finished = True
                delivered = "".join(self.delivered)
                self.outcome = await gateway.offload(
                    _after_stop, self.maker, self.account, self.call, self.user_text, delivered
                )
                if self.outcome.conversation_id is None:
                    self.outcome = replace(self.outcome, conversation_id=self.conversation_id)
                return self.outcome
        return None  # not reached: nothing cancels this shielded scope, so its exit swallows nothing


def _after_stop(maker: sessionmaker, account: Principal, call: ChatCall, user_text: str, delivered: str) -> StopOutcome:
    conversation_id = call.conversation_id
    with maker.begin() as s:
        row = s.scalars(select(UsageRecord).where(UsageRecord.request_id == call.request_id)).first()
        prompt, completion = (row.prompt_tokens, row.completion_tokens) if row is not None else (0, 0)
        charged = 0 if account.is_admin else prompt + completion
        if delivered.strip() and not account.is_admin:
            from backend.chat import conversations

            try:
                with s.begin_nested():
                    conversation_id = conversations.record_exchange(
                        s,
                        user_id=account.id,
                        conversation_id=conversation_id,
                        model_name=call.model.name,
                        user_text=user_text,
                        reply_text=delivered,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                    )
            except ServiceError:  # the conversation was deleted meanwhile; the charge stands
                log.info("stopped chat %s: its conversation is gone", call.request_id)
        left = balance(s, account)
    return StopOutcome(call.request_id, charged, delivered, conversation_id, left)


_live_lock = threading.Lock()
_live: dict[str, LiveChat] = {}


async def stop_chat(session_key: str | None) -> StopOutcome | None:
    """Stop the chat running in this Gradio session (the Stop button); None when none runs."""
    with _live_lock:
        live = _live.get(session_key or "")
    return await live.stop() if live is not None else None


async def stream_chat(
    maker: sessionmaker,
    settings: Settings,
    *,
    account: Principal,
    model_name: str | None,
    message: str,
    history: list[dict[str, Any]] | None,
    conversation_id: int | None,
    session_key: str | None = None,
) -> AsyncIterator[ChatProgress]:
    """Send `message` with the chatbot's `history` to `model_name` through the text gateway
    and stream the reply: each step carries the new history; the last one the result, the
    tokens used and the balance left. A refusal before the model runs (402 no quota, 404 /
    403 model, 413 too long, 503 busy) or an upstream failure ends with `error` set.
    Cancelling the consumer (Gradio's Stop) closes the call: the prompt and the delivered
    tokens are charged."""
    text = (message or "").strip()
    history = [dict(m) for m in history or []]
    if not text:
        yield ChatProgress(history, "", conversation_id, done=True, error=_empty_message())
        return
    dialog = [*dialog_from_history(history), {"role": "user", "content": text}]
    history.append(_message("user", text))
    if account.is_admin:
        conversation_id = None  # admin console tests keep no history

    try:
        call = await gateway.start_chat(
            maker,
            settings,
            caller=Caller.of(account),
            dialog=dialog,
            model_name=model_name or None,
            conversation_id=conversation_id,
            record_history=not account.is_admin,
        )
    except ServiceError as exc:
        yield ChatProgress(history, "", conversation_id, done=True, error=exc)
        return
    live = LiveChat(maker, account, call, text, conversation_id)
    key = session_key or call.request_id
    with _live_lock:
        _live[key] = live
    reply = ""
    history.append(_message("assistant", ""))
    try:
        yield ChatProgress(history, reply, conversation_id)
        while True:
            try:
                event = await live.next_event()
            except ServiceError as exc:  # the upstream failed mid-way: the delivered part is charged
                if not reply:
                    history.pop()
                left = await gateway.offload(current_balance, maker, account)
                yield ChatProgress(history, reply, conversation_id, done=True, error=exc, balance=left)
                return
            if event is None:
                break
            if isinstance(event, ChatResult):
                left = await gateway.offload(current_balance, maker, account)
                conversation_id = event.conversation_id if not account.is_admin else None
                yield ChatProgress(history, reply, conversation_id, done=True, result=event, balance=left)
                return
            if not live.mark_shown(event):
                break
            reply += event
            history[-1] = _message("assistant", reply)
            yield ChatProgress(history, reply, conversation_id)
        # ended without a result: Stop closed it from another event
        outcome = live.outcome or await live.stop()
        yield ChatProgress(
            history,
            reply,
            outcome.conversation_id if outcome else conversation_id,
            done=True,
            stopped=outcome,
            balance=outcome.balance if outcome else None,
        )
    finally:
        await live.stop()  # shielded inside
        with _live_lock:
            if _live.get(key) is live:
                del _live[key]


def current_balance(maker: sessionmaker, account: Principal) -> quota.Balance | None:
    """The account's balance read now in a short session (None for an admin)."""
    with maker() as s:
        return balance(s, account)


def _empty_message() -> ServiceError:
    return ServiceError("APP_QUERY_METHOD_ERROR", "type a message first", 400)


# --- voice and pictures ------------------------------------------------------------------


def _users_only(account: Principal, what: str) -> None:
    if account.is_admin:
        raise ServiceError(
            "PERMISSION_DENIED",
            f"{what} in the playground charges a user's quota; sign in to the dashboard as a user to try it",
            403,
        )


def _read_upload(path: str | Path | None, what: str, limit: int) -> tuple[bytes, str]:
    if not path:
        raise ServiceError("GET_FILE_FAIL", f"no {what} was given; record or upload one", 400)
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > limit:
            raise ServiceError("GET_FILE_FAIL", f"the {what} is larger than the limit of {limit} bytes", 413)
        return file.read_bytes(), file.name
    except OSError:
        raise ServiceError("GET_FILE_FAIL", f"the {what} could not be read; upload it again", 400) from None


async def transcribe(
    maker: sessionmaker, settings: Settings, *, account: Principal, audio_path: str | Path | None
) -> media.Recognition:
    """Transcribe a recorded or uploaded clip (WAV or 16 kHz PCM) with the media service:
    free unless voice costs quota, one usage row. Users only (403 for an admin)."""
    _users_only(account, "speech recognition")
    data, name = _read_upload(audio_path, "voice clip", settings.upload_max_bytes)
    # Gradio names its recordings itself; let the bytes say what they are
    filename = name if Path(name).suffix.lower() in VOICE_SUFFIXES else None
    clip = media.voice_clip(data, filename, limit=settings.upload_max_bytes)
    return await media.transcribe_voice(maker=maker, settings=settings, user_id=account.id, clip=clip)


async def recognise_picture(
    maker: sessionmaker, settings: Settings, *, account: Principal, image_path: str | Path | None
) -> media.Recognition:
    """Read the text in an uploaded picture with the media service: one picTime reserved,
    charged on success (PIC_TIMES_NOT_ENOUGH, 402, when none is left). Users only."""
    _users_only(account, "picture recognition")
    data, name = _read_upload(image_path, "picture", settings.upload_max_bytes)
    picture = media.picture(data, name, limit=settings.upload_max_bytes)
    return await media.read_picture(maker=maker, settings=settings, user_id=account.id, picture=picture)


async def attachments_text(
    maker: sessionmaker,
    settings: Settings,
    *,
    account: Principal,
    files: list[str] | None,
    describe: Callable[[str, str], str],
) -> str:
    """The text of files attached to a chat message: pictures read, clips transcribed (each
    charged like its own tab), joined as `describe(kind, text)` paragraphs."""
    parts = []
    for path in files or []:
        suffix = Path(path).suffix.lower()
        if suffix in VOICE_SUFFIXES or suffix in (".mp3", ".ogg", ".webm", ".m4a", ".flac"):
            found = await transcribe(maker, settings, account=account, audio_path=path)
            parts.append(describe("voice", found.content))
        else:
            found = await recognise_picture(maker, settings, account=account, image_path=path)
            parts.append(describe("picture", found.content))
    return "\n\n".join(parts)
