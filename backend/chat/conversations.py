"""Conversation history (seed-003 `model_conversation` + `model_message`).

Users see and change only their own conversations and the messages in them; an admin
sees all. Another user's id answers 404, exactly like an id that does not exist.
`record_exchange` is the hook the chat endpoints call to write history.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.accounts.changes import Change, apply_changes
from backend.accounts.viewer import (
    Page,
    Viewer,
    bad_request,
    count_listing,
    created_range,
    escape_like,
    not_found,
    run_listing,
)
from db.models import ModelConversation, ModelInfo, ModelMessage, User

log = logging.getLogger("meteor.conversations")

TITLE_MAX = 50
AI_NAME_MAX = 50
ROLE_MAX = 50
DEFAULT_TITLE = "New conversation"


# --- answers -----------------------------------------------------------------------------


# --- conversations -----------------------------------------------------------------------


def _visible(query, viewer: Viewer):
    return query if viewer.is_admin else query.where(ModelConversation.user_id == viewer.user_id)


def find_conversations(
    session: Session,
    viewer: Viewer,
    *,
    title: str | None = None,
    ai_name: str | None = None,
    created_start: str | None = None,
    created_end: str | None = None,
    user_id: str | None = None,
    page: Page | None = None,
    bare_limit: int = 1000,
    oldest_first: bool = False,
    with_total: bool = False,
) -> tuple[list[tuple[ModelConversation, ModelInfo | None]], int | None]:
    """The viewer's conversations, newest first (or `oldest_first`, as the original code
    listed them), filtered by any subset of: title (substring), aiName (exact), an inclusive
    created range, and (admins) userId. Returns the rows and, when paged or `with_total`,
    the total. Each conversation comes with its model (None when it has none, or it is gone)."""
    query = _visible(select(ModelConversation), viewer)
    if title:
        query = query.where(ModelConversation.title.ilike(f"%{escape_like(title)}%", escape="\\"))
    if ai_name:
        query = query.where(ModelConversation.ai_name == ai_name)
    if user_id and viewer.is_admin:
        query = query.where(ModelConversation.user_id == user_id)
    query = query.where(*created_range(ModelConversation.created_time, created_start, created_end))
    query = query.order_by(ModelConversation.id.asc() if oldest_first else ModelConversation.id.desc())
    rows, total = run_listing(session, query, page, bare_limit=bare_limit)
    if total is None and with_total:
        total = len(rows) if len(rows) < bare_limit else count_listing(session, query)
    model_ids = {c.model_id for c in rows if c.model_id is not None}
    models = (
        {m.model_id: m for m in session.scalars(select(ModelInfo).where(ModelInfo.model_id.in_(model_ids)))}
        if model_ids
        else {}
    )
    return [(c, models.get(c.model_id)) for c in rows], total


def get_conversation(session: Session, viewer: Viewer, conversation_id: int) -> ModelConversation:
    """The conversation if the viewer may see it; 404 otherwise."""
    conv = session.get(ModelConversation, conversation_id) if conversation_id <= 2**31 - 1 else None
    if conv is None or (not viewer.is_admin and conv.user_id != viewer.user_id):
        raise not_found("conversation", conversation_id)
    return conv


def _messages(session: Session, conv: ModelConversation) -> list[ModelMessage]:
    query = select(ModelMessage).where(ModelMessage.conversation_id == conv.id)
    return list(session.scalars(query.order_by(ModelMessage.created_time, ModelMessage.id)))


def conversation_messages(session: Session, viewer: Viewer, conversation_id: int) -> list[ModelMessage]:
    """The messages of a conversation the viewer may see (404 otherwise), oldest first."""
    return _messages(session, get_conversation(session, viewer, conversation_id))


def conversation_detail(
    session: Session, viewer: Viewer, conversation_id: int
) -> tuple[ModelConversation, list[ModelMessage]]:
    """The conversation the viewer may see (404 otherwise) and its messages, oldest first."""
    conv = get_conversation(session, viewer, conversation_id)
    return conv, _messages(session, conv)


def _check_text(value: str | None, field: str, limit: int) -> str | None:
    if value is not None and len(value) > limit:
        raise bad_request(f"{field} must be at most {limit} characters")
    return value


def create_conversation(
    session: Session,
    viewer: Viewer,
    *,
    user_id: str | None = None,
    ai_name: str | None = None,
    title: str | None = None,
    model_id: int | None = None,
) -> ModelConversation:
    """A new conversation. A user always creates their own (a `userId` in the request is
    ignored); an admin must name an existing user."""
    if viewer.is_admin:
        if not user_id:
            raise bad_request("userId is required when an admin creates a conversation")
        if session.get(User, str(user_id)) is None:
            raise not_found("user", user_id)
        owner = str(user_id)
    else:
        owner = str(viewer.user_id)
    if model_id is not None and not ai_name:
        model = session.get(ModelInfo, model_id) if model_id <= 2**31 - 1 else None
        if model is not None and (viewer.is_admin or model.user_id in (None, owner)):
            ai_name = model.model_name[:AI_NAME_MAX]  # what a chat through /v1 records as aiName
    conv = ModelConversation(
        user_id=owner,
        ai_name=_check_text(ai_name, "aiName", AI_NAME_MAX),
        title=_check_text(title, "title", TITLE_MAX),
        model_id=model_id,
    )
    session.add(conv)
    session.flush()
    return conv


class ConversationUpdate(BaseModel):
    """The fields of a conversation to change (only those set); None clears either."""

    title: str | None = None
    ai_name: str | None = None


def update_conversation(
    session: Session, viewer: Viewer, conversation_id: int, update: ConversationUpdate
) -> ModelConversation:
    """Change the title and/or aiName of a conversation the viewer may see."""
    conv = get_conversation(session, viewer, conversation_id)
    rules = {
        "title": Change("title", lambda v: _check_text(v, "title", TITLE_MAX)),
        "ai_name": Change("aiName", lambda v: _check_text(v, "aiName", AI_NAME_MAX)),
    }
    apply_changes(conv, update, rules)
    conv.updated_time = datetime.now(UTC)
    session.flush()
    return conv


def delete_conversations(session: Session, viewer: Viewer, ids: list[int]) -> int:
    """Delete these conversations and all their messages. All or nothing: one id the
    viewer cannot see is a 404 and nothing is deleted."""
    visible = set(session.scalars(_visible(select(ModelConversation.id), viewer).where(ModelConversation.id.in_(ids))))
    missing = [i for i in ids if i not in visible]
    if missing:
        raise not_found("conversation", missing[0])
    session.execute(
        delete(ModelMessage).where(ModelMessage.conversation_id.in_(ids)).execution_options(synchronize_session=False)
    )
    session.execute(
        delete(ModelConversation).where(ModelConversation.id.in_(ids)).execution_options(synchronize_session=False)
    )
    return len(ids)


# --- messages ----------------------------------------------------------------------------


def add_message(
    session: Session,
    viewer: Viewer,
    *,
    conversation_id: int,
    role: str | None = None,
    content: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> ModelMessage:
    """Append one message to a conversation the viewer may see (role defaults to user)."""
    conv = get_conversation(session, viewer, conversation_id)
    role = (role or "user").strip()
    if not role or len(role) > ROLE_MAX:
        raise bad_request(f"role must be 1-{ROLE_MAX} characters")
    for name, value in (("promptTokens", prompt_tokens), ("completionTokens", completion_tokens)):
        if value is not None and not 0 <= value <= 2**31 - 1:
            raise bad_request(f"{name} must be between 0 and 2147483647")
    message = ModelMessage(
        conversation_id=conv.id,
        role=role,
        content=content or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    session.add(message)
    conv.updated_time = datetime.now(UTC)
    session.flush()
    return message


def delete_messages(session: Session, viewer: Viewer, ids: list[int]) -> int:
    """Delete these messages. All or nothing: one id in a conversation the viewer cannot
    see is a 404 and nothing is deleted."""
    query = select(ModelMessage.id).where(ModelMessage.id.in_(ids))
    if not viewer.is_admin:
        query = query.join(ModelConversation, ModelConversation.id == ModelMessage.conversation_id).where(
            ModelConversation.user_id == viewer.user_id
        )
    visible = set(session.scalars(query))
    missing = [i for i in ids if i not in visible]
    if missing:
        raise not_found("message", missing[0])
    session.execute(delete(ModelMessage).where(ModelMessage.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)


# --- the chat history hook ---------------------------------------------------------------

_SPACES = re.compile(r"\s+")
_WRAPPERS = "\"'“”‘’「」《》`*#"


def first_words(text: str, limit: int = TITLE_MAX) -> str:
    """The start of `text` on one line, cut at a word boundary when there is one."""
    line = _SPACES.sub(" ", text or "").strip()
    if len(line) <= limit:
        return line
    cut = line[:limit]
    space = cut.rfind(" ")
    return cut[:space].rstrip() if space >= limit // 2 else cut


def make_title(
    user_text: str,
    reply_text: str = "",
    title_writer: Callable[[str, str], str | None] | None = None,
) -> str:
    """A conversation title of at most 50 characters: the one `title_writer` (the model)
    writes from the first exchange, or — when there is no writer, it returns nothing
    usable or it raises — the first words of the user's text."""
    if title_writer is not None:
        try:
            written = title_writer(user_text, reply_text)
        except Exception:  # a failed title must never fail the chat that triggered it
            log.warning("title writer failed; using the first words", exc_info=True)
            written = None
        if written:
            title = first_words(str(written).strip().strip(_WRAPPERS).strip())
            if title.lower().startswith("title:"):
                title = title[6:].strip()
            if title:
                return title
    return first_words(user_text) or DEFAULT_TITLE


def record_exchange(
    session: Session,
    *,
    user_id: str,
    conversation_id: int | None,
    model_name: str | None,
    user_text: str,
    reply_text: str,
    prompt_tokens: int,
    completion_tokens: int,
    title_writer: Callable[[str, str], str | None] | None = None,
) -> int:
    """Write one chat exchange into the user's history and return the conversation id.

    A new conversation is created when `conversation_id` is None (aiName = model_name);
    otherwise it must belong to `user_id` (404 otherwise). The user turn carries the
    prompt tokens, the reply the completion tokens. A conversation without a title gets
    `make_title(user_text, reply_text, title_writer)`. The caller commits."""
    viewer = Viewer.for_user(user_id)
    if conversation_id is None:
        conv = create_conversation(session, viewer, ai_name=(model_name or None) and model_name[:AI_NAME_MAX])
    else:
        conv = get_conversation(session, viewer, conversation_id)
    add_message(session, viewer, conversation_id=conv.id, role="user", content=user_text, prompt_tokens=prompt_tokens)
    add_message(
        session,
        viewer,
        conversation_id=conv.id,
        role="assistant",
        content=reply_text,
        completion_tokens=completion_tokens,
    )
    if not conv.title:
        conv.title = make_title(user_text, reply_text, title_writer)
    session.flush()
    return conv.id
