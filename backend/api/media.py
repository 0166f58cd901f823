"""Seed-000 voice (`POST /voiceModel/chat`) and picture (`POST /PictureToTextModel/chat`)
recognition. Both answer `{"code": 0, "msg": "请求成功", "content": text, "model": engine}`.

The caller is a Bearer user token (or, with METEOR_LEGACY_UUID_AUTH on, the seed's `uuid`
+ `username` headers); it is checked before the body is read. The body is read into
memory with the upload limit enforced while it streams in (413 as soon as it is passed),
then parsed in memory — nothing touches the disk. The optional `model` (query parameter
or form field) picks the engine; see `backend.media.recognize` for engines and charging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import anyio
from fastapi import APIRouter, Query, Request

from backend.api import envelope
from backend.api.deps import resolve_caller
from backend.api.schemas import seed000
from backend.config import Settings
from backend.errors import ServiceError
from backend.media import recognize as media

router = APIRouter(tags=["voice and pictures"], responses=seed000.errors(400, 401, 402, 403, 404, 405, 413, 422, 429))
T = TypeVar("T")

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small form fields around the file
WAV_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"}
IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/bmp": "bmp"}

envelope.on_invalid("MODEL_ERROR", "/voiceModel/chat", "/PictureToTextModel/chat")

ModelParam = Annotated[
    str | None,
    Query(
        max_length=50,
        description="Engine: `embedded` (default from settings) or the name of an online connection",
    ),
]


def _body_doc(kind: str) -> dict:
    file_doc = {
        "voice": "Raw PCM (16 kHz, 16-bit little-endian, mono; `.pcm`) or WAV at any rate and channel count "
        "(`.wav`, resampled to 16 kHz mono)",
        "picture": "A picture: jpg, jpeg, png, webp or bmp",
    }[kind]
    multipart = {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": file_doc},
                "model": {"type": "string", "description": "Engine (same as the query parameter)"},
            },
        }
    }
    raw_types = ["application/octet-stream", "audio/wav"] if kind == "voice" else list(IMAGE_TYPES)
    content = {"multipart/form-data": multipart}
    content.update({t: {"schema": {"type": "string", "format": "binary", "description": file_doc}} for t in raw_types})
    return {"requestBody": {"required": True, "content": content}}


@dataclass
class Upload:
    data: bytes
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `cap` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ServiceError("GET_FILE_FAIL", f"the upload ({declared} bytes) is larger than the limit of {cap}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise ServiceError("GET_FILE_FAIL", f"the upload is larger than the limit of {cap} bytes", 413)
    return bytes(body)


async def read_upload(request: Request, settings: Settings, kind: str) -> Upload:
    """The uploaded file: multipart field `file`, or the raw body (a voice clip of any
    content type; a picture with an image/* content type)."""
    limit = settings.upload_max_bytes
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";")[0].strip().lower()
    if mime == "multipart/form-data":
        body = await read_body(request, limit + MULTIPART_OVERHEAD)
        parts = media.parse_multipart(body, content_type)
        upload = parts.get("file")
        if upload is None:
            raise ServiceError("GET_FILE_FAIL", "the multipart body has no field named 'file'", 400)
        fields = {n: p.data.decode("utf-8", "replace") for n, p in parts.items() if p.filename is None and n != "file"}
        if len(upload.data) > limit:
            raise ServiceError("GET_FILE_FAIL", f"the file is larger than the upload limit of {limit} bytes", 413)
        return Upload(upload.data, upload.filename, fields)
    if kind == "voice":
        body = await read_body(request, limit)
        return Upload(body, "body.wav" if mime in WAV_TYPES else None)
    if mime in IMAGE_TYPES:
        body = await read_body(request, limit)
        return Upload(body, f"body.{IMAGE_TYPES[mime]}")
    raise ServiceError(
        "GET_FILE_FAIL", "send the picture as multipart field 'file' (or as the body with an image/* type)", 400
    )


async def caller_id(request: Request) -> str:
    """The signed-in user's id; the check runs in a worker thread (it reads the database)."""
    settings: Settings = request.app.state.settings

    def resolve() -> str:
        with request.app.state.sessionmaker() as session:
            return resolve_caller(request, session, settings).id

    return await anyio.to_thread.run_sync(resolve)


def _engine_name(model: str | None, upload: Upload) -> str | None:
    name = model or upload.fields.get("model") or None
    if name is not None and len(name) > 50:
        raise ServiceError("MODEL_ERROR", "model names are at most 50 characters", 422)
    return name


async def _checked_upload(
    request: Request, model: str | None, kind: str, check: Callable[..., T]
) -> tuple[str, T, str | None, Upload]:
    """The signed-in user's id, the upload checked by `check` (in a worker thread: it
    decodes the file), the engine name the request picks and the upload (its form fields),
    in that order of checks."""
    settings: Settings = request.app.state.settings
    user_id = await caller_id(request)
    upload = await read_upload(request, settings, kind)
    checked = await anyio.to_thread.run_sync(
        lambda: check(upload.data, upload.filename, limit=settings.upload_max_bytes)
    )
    return user_id, checked, _engine_name(model, upload), upload


LanguageParam = Annotated[
    str | None,
    Query(
        max_length=16,
        description="Embedded engine's language: `auto` (default from settings: detect Chinese or English), "
        "`zh` or `en`",
    ),
]


@router.post("/voiceModel/chat", openapi_extra=_body_doc("voice"))
async def voice_chat(request: Request, model: ModelParam = None, language: LanguageParam = None) -> dict:
    """Transcribe a voice clip: raw 16 kHz 16-bit mono PCM, or WAV at any rate and channel
    count, as multipart field `file` or as the raw body. `language` (query or form field)
    picks the embedded engine's language; the answer says which one it used."""
    settings: Settings = request.app.state.settings
    user_id, clip, engine, upload = await _checked_upload(request, model, "voice", media.voice_clip)
    result = await media.transcribe_voice(
        maker=request.app.state.sessionmaker,
        settings=settings,
        user_id=user_id,
        clip=clip,
        engine=engine,
        language=language or upload.fields.get("language") or None,
    )
    return envelope.ok(
        "请求成功", content=result.content, model=result.engine, seconds=result.audio_seconds, language=result.language
    )


@router.post("/PictureToTextModel/chat", openapi_extra=_body_doc("picture"))
async def picture_chat(request: Request, model: ModelParam = None) -> dict:
    """Read the text in a picture (jpg, jpeg, png, webp, bmp) sent as multipart field
    `file`; one picTime per successful recognition."""
    settings: Settings = request.app.state.settings
    user_id, picture, engine, _upload = await _checked_upload(request, model, "picture", media.picture)
    result = await media.read_picture(
        maker=request.app.state.sessionmaker, settings=settings, user_id=user_id, picture=picture, engine=engine
    )
    return envelope.ok("请求成功", content=result.content, model=result.engine)
