"""OpenAI-compatible /v1/models and /v1/chat/completions, authenticated by per-user API keys.

The official `openai` client works against it unchanged: `OpenAI(base_url=".../v1",
api_key="sk-...")`. Streaming answers Server-Sent Events (with a usage chunk when
`stream_options.include_usage` is set); errors use the OpenAI error shape. A chat goes into
the caller's conversation history only when it names one: `conversation_id` in the body
or the `X-Conversation-Id` header.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from backend.accounts import apikeys
from backend.api.deps import SessionDep, SettingsDep, bearer_token
from backend.api.schemas import openai
from backend.api.text import (
    MAX_TOKENS,
    MAX_TURN_CHARS,
    MAX_TURNS,
    ChatStreamResponse,
    LastChunk,
    answer_whole,
    check_dialog,
    events,
    prime,
)
from backend.catalog import registry as model_registry
from backend.chat import gateway
from backend.chat.gateway import Caller, ChatCall, ChatResult
from backend.errors import ServiceError, unauthorized
from db.models import ApiKey, User
from db.session import reading

router = APIRouter(tags=["openai"], responses=openai.errors(401, 403, 405, 413))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TURN_CHARS)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TURN_CHARS)] | Annotated[list[TextPart], Field(max_length=64)] | None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=50)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_TURNS)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    seed: int | None = None
    stop: Annotated[str, Field(min_length=1, max_length=60)] | Annotated[list[str], Field(max_length=8)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    conversation_id: Annotated[int, Field(ge=1)] | None = None


def api_key_caller(request: Request, session: Session) -> tuple[User, ApiKey]:
    """The user and key behind `Authorization: Bearer sk-...` (`apikeys.authenticate`: usually
    cached, else one indexed read, ended before returning); then a short write of its own only
    when `last_used_at` is a minute old. Later reads start a read-only transaction again."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing API key: send Authorization: Bearer sk-...")
    user, key = apikeys.authenticate(session, token)
    touched = session.info.pop(apikeys.TOUCHED, None)
    if session.in_transaction():
        session.commit()  # the read ends
    if touched is not None:
        apikeys.touch(session, touched)
        session.commit()
    return user, key


def _text_of(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


def _conversation_id(body: ChatCompletionIn, request: Request) -> int | None:
    if body.conversation_id is not None:
        return body.conversation_id
    header = request.headers.get("x-conversation-id")
    if header is None or not header.strip():
        return None
    try:
        value = int(header)
    except ValueError:
        value = 0
    if value < 1:
        raise ServiceError("APP_QUERY_METHOD_ERROR", "X-Conversation-Id must be a positive integer", 422)
    return value


def _usage(result: ChatResult) -> dict[str, int]:
    # quota policy: /v1 reports raw tokens; what they cost at the model's price is in the ledger
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _chunk(call: ChatCall, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{call.request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model.name,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


_MARK = "\x00delta\x00"


def _delta_frame(call: ChatCall, created: int) -> tuple[bytes, bytes]:
    """A delta's event is this prefix, the text as JSON, this suffix: built once per call
    rather than a dict serialised per delta (a stream sends dozens)."""
    prefix, _, suffix = _sse(_chunk(call, created, {"content": _MARK}, None)).partition(orjson.dumps(_MARK))
    return prefix, suffix


async def sse_chunks(call: ChatCall, include_usage: bool) -> AsyncIterator[bytes]:
    """The chat as OpenAI `chat.completion.chunk` events, then `[DONE]`."""
    created = int(time.time())
    prefix, suffix = _delta_frame(call, created)
    # the role's event goes with the first piece (already primed), the ending's in one LastChunk
    head = _sse(_chunk(call, created, {"role": "assistant", "content": ""}, None))
    async for event in events(call):
        if isinstance(event, str):
            yield head + prefix + orjson.dumps(event) + suffix
            head = b""
        elif isinstance(event, ChatResult):
            tail = [head, _sse(_chunk(call, created, {}, event.finish_reason))]
            if include_usage:
                final = _chunk(call, created, {}, None)
                final["choices"] = []
                final["usage"] = _usage(event)
                tail.append(_sse(final))
            tail.append(DONE)
            yield LastChunk(b"".join(tail))
        else:
            error = {"error": {"message": event.message, "type": "api_error", "code": event.code, "param": None}}
            yield LastChunk(head + _sse(error))


@router.get("/v1/models", **openai.answers(openai.ModelList))
def list_models(request: Request, session: SessionDep) -> dict:
    """The models this key may call."""
    user, key = api_key_caller(request, session)
    reading(session)
    allowed = apikeys.allowed_models_of(key)
    rows = model_registry.usable_models(session, user_id=user.id)
    data = [
        {
            "id": m.model_name,
            "object": "model",
            "created": int(m.created_time.timestamp()),
            "owned_by": "meteor" if m.user_id is None else "user",
        }
        for m in rows
        if allowed is None or m.model_name in allowed
    ]
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", response_model=None, responses=openai.errors(400, 402, 404, 422, 429))
async def chat_completions(
    body: ChatCompletionIn, request: Request, response: Response, settings: SettingsDep
) -> dict | StreamingResponse:
    """A chat completion, streamed (SSE) or whole, with usage."""
    dialog = check_dialog(
        [{"role": "system" if m.role == "developer" else m.role, "content": _text_of(m)} for m in body.messages]
    )
    conversation_id = _conversation_id(body, request)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    maker = request.app.state.sessionmaker
    started = time.monotonic()

    def plan() -> gateway.ChatPlan:  # one hop: the key, the model, then the prompt count
        with maker() as session:
            user, key = api_key_caller(request, session)
            model_name = apikeys.model_for_key(session, key, body.model)  # a browser key names its one model
            caller = replace(Caller.for_user(user), api_key_id=key.id)  # quota policy: the key's rate limit
            target = gateway.find_target(
                session, settings, caller=caller, model_name=model_name, conversation_id=conversation_id
            )
        return gateway.plan_chat(
            settings,
            target,
            caller=caller,
            dialog=dialog,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            overrides={
                "temperature": body.temperature,
                "top_p": body.top_p,
                "top_k": body.top_k,
                "seed": body.seed,
                "stop": stop,
            },
            record_history=conversation_id is not None,
            started=started,
        )

    call = await gateway.open_chat(maker, settings, plan)
    headers = {"X-Request-Id": call.request_id}
    if conversation_id is not None:
        headers["X-Conversation-Id"] = str(conversation_id)
    if body.stream:
        await prime(call)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ChatStreamResponse(
            sse_chunks(call, include_usage),
            call,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
        )
    result = await answer_whole(call, request)
    response.headers.update(headers)
    answer: dict[str, Any] = {
        "id": f"chatcmpl-{result.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
    }
    if result.conversation_id is not None:
        answer["conversation_id"] = result.conversation_id
    return answer
