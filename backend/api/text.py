"""Seed-000 text models (/textModel/chat, /textModel/stream) and /admin/console_test.

All three go through `backend.chat.gateway`. The stream answers newline-delimited
JSON frames shaped like iFlytek Spark's (see ORIGINALS.md): content deltas in
`payload.choices.text[].content`, the usage on the last frame (`header.status == 2`).
An error before the first byte is the plain `{code, msg}` envelope with its HTTP status;
an error mid-stream is a last frame with `header.code != 0` and the message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from backend.api import envelope
from backend.api.deps import SettingsDep, admin_from_token, require_bearer, resolve_caller
from backend.api.schemas import seed000
from backend.chat import gateway
from backend.chat.gateway import Caller, ChatCall, ChatFailed, ChatResult
from backend.config import Settings
from backend.errors import ServiceError
from db.session import read_only

router = APIRouter(tags=["text"], responses=seed000.errors(401, 402, 403, 404, 405, 413, 422, 429))

MAX_TURNS = 200
MAX_TURN_CHARS = 32_000
MAX_DIALOG_CHARS = 100_000
MAX_TOKENS = gateway.MAX_OUTPUT_TOKENS


class DialogTurn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TURN_CHARS)]


Dialog = Annotated[list[DialogTurn], Field(min_length=1, max_length=MAX_TURNS)]
ModelName = Annotated[str, Field(min_length=1, max_length=50)]


class TextChatIn(BaseModel):
    uuid: Annotated[str, Field(max_length=32)] | int | None = None
    username: Annotated[str, Field(max_length=64)] | None = None
    dialog: Dialog
    model: ModelName | None = None
    conversation_id: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None


class ConsoleTestIn(BaseModel):
    dialog: Dialog
    limit: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    top_k: Annotated[int, Field(ge=0, le=1000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    model: ModelName | None = None


def check_dialog(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """Refuse a dialog that is too large (413) or has nothing to answer (422)."""
    size = sum(len(t["content"]) for t in turns)
    if size > MAX_DIALOG_CHARS:
        raise ServiceError(
            "APP_QUERY_METHOD_ERROR", f"the dialog is too long: {size} characters, at most {MAX_DIALOG_CHARS}", 413
        )
    if not any(t["role"] == "user" and t["content"].strip() for t in turns):
        raise ServiceError("APP_QUERY_METHOD_ERROR", "the dialog needs at least one non-empty user message", 422)
    return turns


def dialog_of(turns: list[DialogTurn]) -> list[dict[str, str]]:
    return check_dialog([{"role": t.role, "content": t.content} for t in turns])


# --- streaming plumbing shared with /v1 ---------------------------------------------------


async def events(call: ChatCall) -> AsyncIterator[str | ChatResult | ChatFailed]:
    """The call's events, straight from the event loop; an upstream failure comes out as its
    ChatFailed, as the last event."""
    try:
        async for event in call:
            yield event
    except ChatFailed as exc:
        yield exc


class LastChunk(bytes):
    """A stream's last piece: it goes out with the end of the body, in the same write."""


class ChatStreamResponse(StreamingResponse):
    """A streamed chat that, however the response ends (finished, client gone, cancelled),
    closes its call: what was not delivered is released. Its frames go out as they come;
    a `LastChunk` ends the body with it (each body message is a socket write, and a write
    to a local client profiled at about a tenth of the event loop's time per chat)."""

    def __init__(self, content: AsyncIterator[str | bytes], call: ChatCall, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.call = call

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ended = False
        async for chunk in self.body_iterator:
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            ended = isinstance(chunk, LastChunk)
            await send({"type": "http.response.body", "body": body, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette's own watch for the client going away is an anyio task group per response
        # (a task handle, a cancel scope cancelled at the end, the task's repr in its message);
        # one plain task that cancels this scope does the same for a fraction
        try:
            with anyio.CancelScope() as streaming:
                watcher = asyncio.ensure_future(_cancel_when_gone(receive, streaming))
                try:
                    await self.stream_response(send)
                finally:
                    watcher.cancel()
        finally:
            await self.call.aclose()  # shielded inside


async def _cancel_when_gone(receive: Receive, streaming: anyio.CancelScope) -> None:
    """Wait for the client's disconnect, then stop the stream (what is delivered is settled)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - a receive that fails means no one is listening either
        pass
    streaming.cancel()


async def prime(call: ChatCall) -> None:
    """Pull the first event before answering: a failure before the first byte becomes the
    plain error envelope (the gateway has already settled it)."""
    try:
        await call.prime()
    except ChatFailed:
        raise
    except BaseException:
        await call.aclose()
        raise


async def answer_whole(call: ChatCall, request: Request) -> ChatResult:
    """The non-streaming answer; a client that disconnects meanwhile stops the call (it is
    charged as cancelled) and gets nothing back."""
    try:
        return await gateway.run_watched(call, request.receive)
    except gateway.ClientGone:  # nobody reads this answer; the status is for the access log
        raise ServiceError("CLIENT_GONE", "the client went away before the answer was ready", 499) from None


# --- seed frames ----------------------------------------------------------------------------


def spark_frame(
    sid: str,
    status: int,
    seq: int,
    content: str = "",
    *,
    code: int = 0,
    message: str = "Success",
    usage: tuple[int, int] | None = None,
    extra_header: dict[str, Any] | None = None,
) -> str:
    """One Spark-shaped frame, newline-terminated."""
    payload: dict[str, Any] = {
        "choices": {
            "status": status,
            "seq": seq,
            "text": [{"role": "assistant", "content": content, "index": 0}] if content or status != 2 else [],
        }
    }
    if usage is not None:
        prompt, completion = usage
        payload["usage"] = {
            "text": {
                "question_tokens": prompt,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        }
    header = {"code": code, "message": message, "sid": sid, "status": status, **(extra_header or {})}
    frame = {"header": header, "payload": payload}
    return json.dumps(frame, ensure_ascii=False) + "\n"


async def spark_frames(call: ChatCall) -> AsyncIterator[str | bytes]:
    """The chat as seed frames: status 0 first, 1 after, 2 last with the usage charged."""
    sid = call.request_id
    seq = 0
    async for event in events(call):
        if isinstance(event, str):
            yield spark_frame(sid, 0 if seq == 0 else 1, seq, event)
            seq += 1
            continue
        if isinstance(event, ChatResult):  # the ChatResult or the failure is the call's last event
            usage = (event.billed_prompt_tokens, event.billed_completion_tokens)
            last = spark_frame(sid, 2, seq, usage=usage, extra_header={"conversation_id": event.conversation_id})
        else:
            message = f"{event.code}: {event.message}"
            last = spark_frame(sid, 2, seq, code=event.status, message=message, usage=(0, event.charged_tokens))
        yield LastChunk(last.encode())


# --- endpoints --------------------------------------------------------------------------


async def _user_call(
    body: TextChatIn, request: Request, settings: Settings, *, record_history: bool = True
) -> ChatCall:
    dialog = dialog_of(body.dialog)
    uuid = None if body.uuid is None else str(body.uuid)
    maker = request.app.state.sessionmaker
    started = time.monotonic()

    def plan() -> gateway.ChatPlan:  # one hop: the token check and the model, then the prompt count
        with maker() as session:
            read_only(session)  # the plan only reads
            caller = Caller.for_user(resolve_caller(request, session, settings, uuid=uuid, username=body.username))
            target = gateway.find_target(
                session, settings, caller=caller, model_name=body.model, conversation_id=body.conversation_id
            )
        return gateway.plan_chat(
            settings,
            target,
            caller=caller,
            dialog=dialog,
            max_tokens=body.max_tokens,
            record_history=record_history,
            started=started,
        )

    return await gateway.open_chat(maker, settings, plan)


@router.post("/textModel/chat")
async def text_chat(body: TextChatIn, request: Request, settings: SettingsDep) -> dict:
    """The whole answer at once; consume_token = prompt + completion tokens charged."""
    call = await _user_call(body, request, settings)
    result = await answer_whole(call, request)
    return envelope.ok(
        "文本大模型回复成功",
        content=result.content,
        consume_token=result.billed_tokens,
        conversation_id=result.conversation_id,
        model=result.model,
    )


@router.post("/textModel/stream")
async def text_stream(body: TextChatIn, request: Request, settings: SettingsDep) -> StreamingResponse:
    """Newline-delimited Spark-shaped frames; usage on the last one."""
    call = await _user_call(body, request, settings)
    await prime(call)
    return ChatStreamResponse(
        spark_frames(call),
        call,
        media_type="application/x-ndjson",
        headers={"X-Request-Id": call.request_id, "Cache-Control": "no-cache"},
    )


@router.post("/admin/console_test")
async def console_test(body: ConsoleTestIn, request: Request, settings: SettingsDep) -> dict:
    """An admin tries a model with limit / top_k / temperature; charged to no user."""
    dialog = dialog_of(body.dialog)
    maker = request.app.state.sessionmaker
    started = time.monotonic()

    def plan() -> gateway.ChatPlan:
        with maker() as session:
            read_only(session)  # the plan only reads
            caller = Caller.for_admin(admin_from_token(session, settings, require_bearer(request)))
            target = gateway.find_target(session, settings, caller=caller, model_name=body.model, conversation_id=None)
        return gateway.plan_chat(
            settings,
            target,
            caller=caller,
            dialog=dialog,
            max_tokens=body.limit,
            overrides={"top_k": body.top_k, "temperature": body.temperature},
            record_history=False,
            started=started,
        )

    call = await gateway.open_chat(maker, settings, plan)
    result = await answer_whole(call, request)
    return envelope.ok(
        "文本模型回复成功", content=result.content, consume_token=result.billed_tokens, model=result.model
    )
