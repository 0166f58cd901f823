"""Seed-003 conversations and messages, under the document's paths and the original code's.

| document                              | original code                          | does                          |
|---------------------------------------|----------------------------------------|-------------------------------|
| GET    /model/message/list            | GET    /model/conversation/list        | list conversations            |
|                                       | DELETE /model/conversation/{ids}       | delete conversations + msgs   |
| POST   /model/message                 | POST   /model/conversation             | create a conversation         |
| PUT    /model/message                 | PUT    /model/conversation            | change title / aiName         |
| GET    /model/message/detail/{id}     | GET    /model/conversation/detail/{id} | one conversation + messages   |
| POST   /model/message/detail          | POST   /model/message (see below)      | add a message                 |
| DELETE /model/message/detail/{ids}    | DELETE /model/message/{ids}            | delete messages               |

`DELETE /model/message/{ids}` deletes **messages**, as the original code and its frontend do
(the document's wording, "delete conversations", would make a user who deletes message 6
lose conversation 6); conversations are deleted at `/model/conversation/{ids}`.

`POST /model/message` means "create a conversation" in the document and "add a message"
in the original code; the body decides: with a `conversationId` it adds a message,
without one it creates a conversation.

The document's list (`/model/message/list`) is a bare JSON list, newest first, unless
`pageNum` or `pageSize` is given; then it is `{total, items}`. The original code's list
(`/model/conversation/list`) is always `{total, items}` and oldest first, as its frontend
expects. Every item carries `modelInfoId` and `modelInfo {modelName, baseModelName}`; a bare
list holds at most 1000 rows, a page at most `METEOR_QUERY_PAGE_SIZE_MAX`. Adding a message
at the original code's `POST /model/message` answers the new message's id as `data`; the
document's `POST /model/message/detail` answers the row. `modelInfoId` is accepted wherever
`modelId` is.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from backend.accounts import identity
from backend.accounts.viewer import Viewer, bad_request, make_page, parse_ids, shape_listing
from backend.api.deps import SessionDep, SettingsDep, require_bearer
from backend.api.envelope import success
from backend.api.schemas import json_body
from backend.api.schemas.seed003 import (
    ConversationIn,
    ConversationUpdateIn,
    MessageIn,
    PageNumQuery,
    PageSizeQuery,
    conversation_detail_public,
    conversation_public,
    errors,
    listed_conversation_public,
    message_public,
)
from backend.chat import conversations

router = APIRouter(tags=["seed-003 conversations"], responses=errors(400, 401, 403, 404, 405, 413))

BARE_LIST_LIMIT = 1000


# --- who is asking -----------------------------------------------------------------------


def current_viewer(request: Request, session: SessionDep, settings: SettingsDep) -> Viewer:
    """A user or an admin Bearer token (its role claim picks which account table is read)."""
    return Viewer.of(identity.authenticate_token(session, settings, require_bearer(request), kinds=("user", "admin")))


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def parse_body(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body whose shape the route decided on; invalid input is a 400."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ())) or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        raise bad_request("invalid request: " + "; ".join(parts)) from None


# --- conversations -----------------------------------------------------------------------


def _list_conversations(
    original: bool,
    session,
    settings,
    viewer: Viewer,
    title: str | None,
    aiName: str | None,  # noqa: N803 - the document's names
    createdTimeStart: str | None,  # noqa: N803
    createdTimeEnd: str | None,  # noqa: N803
    userId: str | None,  # noqa: N803
    pageNum: int | None,  # noqa: N803
    pageSize: int | None,  # noqa: N803
) -> dict[str, Any]:
    page = make_page(pageNum, pageSize, max_size=settings.query_page_size_max)
    found, total = conversations.find_conversations(
        session,
        viewer,
        title=title,
        ai_name=aiName,
        created_start=createdTimeStart,
        created_end=createdTimeEnd,
        user_id=userId,
        page=page,
        bare_limit=BARE_LIST_LIMIT,
        oldest_first=original,
        with_total=original,
    )
    return success(shape_listing([listed_conversation_public(c, m) for c, m in found], total))


@router.get("/model/message/list")
def list_conversations_document(
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    title: Annotated[str | None, Query(max_length=50)] = None,
    aiName: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803 - the document's names
    createdTimeStart: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    createdTimeEnd: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    userId: Annotated[str | None, Query(max_length=32)] = None,  # noqa: N803
    pageNum: PageNumQuery = None,  # noqa: N803
    pageSize: PageSizeQuery = None,  # noqa: N803
) -> dict[str, Any]:
    """The document's list: newest first, a bare list unless paged."""
    return _list_conversations(
        False, session, settings, viewer, title, aiName, createdTimeStart, createdTimeEnd, userId, pageNum, pageSize
    )


@router.get("/model/conversation/list")
def list_conversations_original(
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    title: Annotated[str | None, Query(max_length=50)] = None,
    aiName: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803 - the document's names
    createdTimeStart: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    createdTimeEnd: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    userId: Annotated[str | None, Query(max_length=32)] = None,  # noqa: N803
    pageNum: PageNumQuery = None,  # noqa: N803
    pageSize: PageSizeQuery = None,  # noqa: N803
) -> dict[str, Any]:
    """The original code's list: `{total, items}` always, oldest first (its frontend opens the
    last card as the newest conversation)."""
    return _list_conversations(
        True, session, settings, viewer, title, aiName, createdTimeStart, createdTimeEnd, userId, pageNum, pageSize
    )


@router.get("/model/message/detail/{conversation_id}")
@router.get("/model/conversation/detail/{conversation_id}")
def conversation_detail(conversation_id: int, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    return success(conversation_detail_public(*conversations.conversation_detail(session, viewer, conversation_id)))


def _create_conversation(session, viewer: Viewer, body: Any) -> dict[str, Any]:
    data = parse_body(ConversationIn, body)
    conv = conversations.create_conversation(
        session,
        viewer,
        user_id=None if data.user_id is None else str(data.user_id),
        ai_name=data.ai_name,
        title=data.title,
        model_id=data.model,
    )
    session.commit()
    return success(conversation_public(conv))


def _add_message(session, viewer: Viewer, body: Any, *, id_only: bool = False) -> dict[str, Any]:
    """Add a message; the answer is the row (the document) or, `id_only`, the new message's
    id (the original code: its frontend keeps `data` as the message id)."""
    data = parse_body(MessageIn, body)
    message = conversations.add_message(
        session,
        viewer,
        conversation_id=data.conversation_id,
        role=data.role,
        content=data.content,
        prompt_tokens=data.prompt_tokens,
        completion_tokens=data.completion_tokens,
    )
    session.commit()
    return success(message.id if id_only else message_public(message))


@router.post(
    "/model/message",
    openapi_extra=json_body(
        MessageIn, ConversationIn, description="with conversationId: a message; else a conversation"
    ),
)
def create_conversation_or_message(
    session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """Document: create a conversation. Original code: add a message. A body with a
    `conversationId` adds a message; any other body creates a conversation."""
    if isinstance(body, dict) and body.get("conversationId") is not None:
        return _add_message(session, viewer, body, id_only=True)
    return _create_conversation(session, viewer, body if body is not None else {})


@router.post("/model/conversation", openapi_extra=json_body(ConversationIn, required=False))
def create_conversation(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    return _create_conversation(session, viewer, body if body is not None else {})


@router.put("/model/message", openapi_extra=json_body(ConversationUpdateIn))
@router.put("/model/conversation", openapi_extra=json_body(ConversationUpdateIn))
def update_conversation(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    data = parse_body(ConversationUpdateIn, body)
    conv = conversations.update_conversation(session, viewer, data.id, data.changes())
    session.commit()
    return success(conversation_public(conv))


# --- messages (the more specific paths first) --------------------------------------------


@router.post("/model/message/detail", openapi_extra=json_body(MessageIn))
@router.post("/model/message/detail/", include_in_schema=False)  # the document's spelling
def add_message(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    return _add_message(session, viewer, body)


@router.delete("/model/message/detail/{ids}")
@router.delete("/model/message/{ids}")  # the original code (and its frontend): messages, never conversations
def delete_messages(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    conversations.delete_messages(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)


@router.delete("/model/conversation/{ids}")
def delete_conversations(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    conversations.delete_conversations(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)
