"""Voice and picture recognition: upload checks and decoding, engine choice, pools, charging.

Uploads are decoded from memory: nothing is written to disk, ever, and no path is built
from a client's file name.

- A voice clip is raw PCM (16 kHz, 16-bit little-endian, mono; `.pcm` / `.raw` or no
  name) or a WAV file at any rate, sample format and channel count (`.wav`, or bytes
  starting with `RIFF…WAVE`), which is decoded and resampled to 16 kHz mono PCM.
- A picture is JPEG, PNG, WebP or BMP; the bytes must be what the name's extension says,
  and at most `MAX_PICTURE_PIXELS` pixels (checked from the header before decoding, so a
  decompression bomb is refused without being inflated). The upload check reads only the
  header and the file's structure; the pixels are decoded (`decode_picture`) inside the
  engine's pool job, i.e. after the caller was signed in, admitted to the pool and had the
  picTime reserved — a user without picTimes never costs the server a decode.

Engines. `embedded` is the offline engine (Whisper base / tiny.en for voice, RapidOCR for
pictures); any other name is the `ai_name` of an online connection (`model_ai_online`)
whose `protocol` says what it speaks:

| protocol        | kind    | ai_api                                   | secret (encrypted)            |
|-----------------|---------|------------------------------------------|-------------------------------|
| `iflytek-iat`   | voice   | `wss://ws-api.xfyun.cn/v2/iat`           | `app_id:api_key:api_secret`   |
| `openai-audio`  | voice   | base URL with `/v1`                      | the API key                   |
| `iflytek-ocr`   | picture | `http://api.xf-yun.com/v1/private/hh_ocr_recognize_doc` | `app_id:api_key:api_secret` |
| `openai-vision` | picture | base URL with `/v1`                      | the API key                   |

A plain `openai` connection (the chat protocol) also works: as a voice engine it is used
as `openai-audio`, as a picture engine as `openai-vision`.
The upstream model of the OpenAI-compatible engines is the connection's `ai_version`
(its `ai_name` when empty); `timeout` is the connection's. A request's optional `model`
picks the engine; without it `Settings.default_voice_engine` /
`default_picture_engine` (both `embedded`) apply.

Running. Engines are loaded once per process (on first use; an online engine once per
connection configuration) and run off the event loop:
embedded engines in a pool of `Settings.model_concurrency` threads, online engines in a
separate pool of `ONLINE_WORKERS` threads. Each pool admits at most its size plus
`Settings.embedded_queue_size` waiting jobs; beyond that a request is refused at once
with MODEL_ERROR (429) before anything is reserved.

Charging. A picture reserves one picTime before its engine runs (none left →
PIC_TIMES_NOT_ENOUGH, 402, and no engine runs), with no transaction open while the
engine works; success settles it (one picTime charged), failure or cancellation
releases it. A voice clip is free unless `Settings.voice_costs_quota`; then it reserves
and settles `ceil(seconds × voice_tokens_per_second)` tokens the same way. Every request
that reaches an engine writes one `usage_records` row (kind `voice` or `picture`, status
ok or error, the clip's `audio_seconds`, the latency); requests refused before that
(bad input, 401, 402, 404, 429) change nothing in the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath
from typing import Any

import anyio
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from backend import security
from backend.accounts import rate_limits
from backend.accounts.viewer import Viewer
from backend.billing import pricing, quota
from backend.catalog import connections
from backend.config import Settings
from backend.errors import ServiceError
from backend.providers import iflytek_iat, iflytek_ocr, netguard, openai_audio, openai_vision, rapid_ocr, whisper_stt
from backend.providers.base import ProviderError
from backend.providers.iflytek_keys import parse_keys
from backend.providers.recognition import SAMPLE_RATE, SAMPLE_WIDTH, Picture, pcm_seconds
from db.models import ModelAiOnline, UsageRecord, User

EMBEDDED = "embedded"
VOICE_ALIASES = {EMBEDDED, "whisper", whisper_stt.MODEL_NAME}
PICTURE_ALIASES = {EMBEDDED, "rapidocr", rapid_ocr.MODEL_NAME}
OPENAI = "openai"  # a plain OpenAI-compatible connection serves both: /audio/transcriptions, vision chat
VOICE_PROTOCOLS = {iflytek_iat.PROTOCOL, openai_audio.PROTOCOL, OPENAI}
PICTURE_PROTOCOLS = {iflytek_ocr.PROTOCOL, openai_vision.PROTOCOL, OPENAI}

PICTURE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
VOICE_EXTENSIONS = {"pcm", "raw", "wav"}
# 4096 × 4096: a 16 MP photo passes, OCR engines scale larger pictures down anyway. Decoding
# one costs up to ~7 bytes per pixel (RGBA + the RGB copy), ~120 MB at the cap.
MAX_PICTURE_PIXELS = 4096 * 4096
DECODE_CONCURRENCY = 2  # pictures decoded at once per process, whatever the pools' sizes
MAX_CLIP_SECONDS = 600
ONLINE_WORKERS = 16

# Leading bytes of container formats that a headerless PCM upload must not start with.
FOREIGN_MAGIC = {
    b"RIFF": "a RIFF (WAV/AVI/WebP) file",
    b"ID3": "an MP3 file",
    b"OggS": "an Ogg file",
    b"fLaC": "a FLAC file",
    b"\x89PNG": "a PNG picture",
    b"\xff\xd8\xff": "a JPEG picture",
    b"GIF8": "a GIF picture",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
}


# --- uploads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormPart]:
    """A multipart/form-data body parsed in memory (first part wins for a repeated name)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ServiceError("GET_FILE_FAIL", "multipart body without a boundary", 400)
    parts: dict[str, FormPart] = {}
    state: dict[str, Any] = {}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", value=b"", data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        _, disposition = parse_options_header(state["headers"].get("content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        ctype = state["headers"].get("content-type")
        if name and name not in parts:
            parts[name] = FormPart(
                name=name,
                filename=filename.decode("utf-8", "replace") if filename is not None else None,
                content_type=ctype.decode("latin-1") if ctype else None,
                data=bytes(state["data"]),
            )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types for malformed bodies
        raise ServiceError("GET_FILE_FAIL", f"the multipart body is malformed: {exc}", 400) from None
    return parts


def extension(filename: str | None) -> str | None:
    """The lower-case extension of a client's file name (never used as a path)."""
    if not filename:
        return None
    suffix = PurePath(filename.replace("\\", "/")).suffix
    return suffix[1:].lower() if suffix else ""


def _too_large(what: str, limit: int) -> ServiceError:
    return ServiceError("GET_FILE_FAIL", f"the {what} is larger than the upload limit of {limit} bytes", 413)


# --- voice clips ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """A voice clip as 16 kHz 16-bit mono PCM, and what it was uploaded as."""

    pcm: bytes
    source: str  # pcm | wav

    @property
    def seconds(self) -> float:
        return pcm_seconds(self.pcm)


def _foreign_format(data: bytes) -> str | None:
    for magic, what in FOREIGN_MAGIC.items():
        if data.startswith(magic):
            return what
    if data[4:8] == b"ftyp":
        return "an MP4/M4A file"
    return None


def _is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def decode_wav(data: bytes) -> bytes:
    """A WAV file (any rate, sample format, channels) as 16 kHz 16-bit mono PCM, in memory."""
    import av

    max_bytes = MAX_CLIP_SECONDS * SAMPLE_RATE * SAMPLE_WIDTH
    out = bytearray()
    try:
        with av.open(io.BytesIO(data), mode="r", format="wav", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise ServiceError("FILE_FORMAT_ILLEGAL", "the WAV file holds no audio stream", 400)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            frames = container.decode(audio=0)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    frame = None
                if frame is not None:
                    frame.pts = None  # espeak-style streamed headers carry no usable timestamps
                for resampled in resampler.resample(frame):
                    out += resampled.to_ndarray().tobytes()
                if len(out) > max_bytes:
                    raise ServiceError(
                        "FILE_FORMAT_ILLEGAL", f"the clip is longer than the limit of {MAX_CLIP_SECONDS} s", 413
                    )
                if frame is None:
                    break
    except ServiceError:
        raise
    except Exception as exc:  # PyAV / FFmpeg errors on damaged files
        message = f"the WAV file cannot be decoded: {type(exc).__name__}"
        raise ServiceError("FILE_FORMAT_ILLEGAL", message, 400) from None
    return bytes(out)


def voice_clip(data: bytes, filename: str | None = None, *, limit: int | None = None) -> Clip:
    """Check and decode an uploaded clip. Errors: GET_FILE_FAIL (empty, 413 too large),
    FILE_FORMAT_ILLEGAL (wrong extension, bytes unlike the name, odd PCM byte count,
    undecodable WAV), AUDIO_TO_TEXT_ERROR (a clip with no samples)."""
    if not data:
        raise ServiceError("GET_FILE_FAIL", "the uploaded clip is empty (0 bytes)", 400)
    if limit is not None and len(data) > limit:
        raise _too_large("clip", limit)
    ext = extension(filename)
    if ext and ext not in VOICE_EXTENSIONS:
        raise ServiceError(
            "FILE_FORMAT_ILLEGAL", f"a voice clip must be .pcm (16 kHz 16-bit mono) or .wav, not .{ext}", 400
        )
    if ext == "wav" or (not ext and _is_wav(data)):
        if not _is_wav(data):
            what = _foreign_format(data) or "not a WAV file (no RIFF/WAVE header)"
            raise ServiceError("FILE_FORMAT_ILLEGAL", f"the clip claims to be WAV (by name or type) but is {what}", 400)
        pcm = decode_wav(data)
        if not pcm:
            raise ServiceError("AUDIO_TO_TEXT_ERROR", "the WAV file holds no audio samples (a zero-length clip)", 400)
        return Clip(pcm, "wav")
    foreign = _foreign_format(data)
    if foreign:
        named = f"named .{ext}" if ext else "sent as raw PCM"
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"the clip is {named} but is {foreign}", 400)
    if len(data) % SAMPLE_WIDTH:
        raise ServiceError(
            "FILE_FORMAT_ILLEGAL",
            f"raw PCM must be 16-bit samples, but {len(data)} bytes is an odd count",
            400,
        )
    if len(data) > MAX_CLIP_SECONDS * SAMPLE_RATE * SAMPLE_WIDTH:
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"the clip is longer than the limit of {MAX_CLIP_SECONDS} s", 413)
    return Clip(data, "pcm")


# --- pictures -------------------------------------------------------------------------------


def picture(data: bytes, filename: str | None = None, *, limit: int | None = None) -> Picture:
    """Check an uploaded picture WITHOUT decoding its pixels: size, extension, format and
    dimensions come from the header, and the file's structure is verified (PNG chunk CRCs,
    a truncated file) — memory stays proportional to the upload, not to its pixels. The
    pixels are decoded later by `decode_picture`, in the engine pool, after the caller was
    admitted and charged. Errors: GET_FILE_FAIL (empty, 413 too large), FILE_FORMAT_ILLEGAL
    (wrong extension, bytes unlike the name, not a picture, damaged, 413 more than
    MAX_PICTURE_PIXELS pixels — a decompression bomb)."""
    if not data:
        raise ServiceError("GET_FILE_FAIL", "the uploaded picture is empty (0 bytes)", 400)
    if limit is not None and len(data) > limit:
        raise _too_large("picture", limit)
    ext = extension(filename)
    allowed = ", ".join(sorted(PICTURE_FORMATS))
    if ext and ext not in PICTURE_FORMATS:
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"a picture must be one of {allowed}, not .{ext}", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb() from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"the file is not a picture ({allowed})", 400) from None
    found = image.format or "unknown"
    if found not in PICTURE_FORMATS.values():
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"the file is a {found} picture; send one of {allowed}", 400)
    if ext and PICTURE_FORMATS[ext] != found:
        raise ServiceError("FILE_FORMAT_ILLEGAL", f"the file is named .{ext} but holds a {found} picture", 400)
    width, height = image.size
    if width * height > MAX_PICTURE_PIXELS:
        raise _bomb(width, height)
    try:
        image.verify()  # reads the structure, inflates nothing
    except Exception:  # Pillow raises many types for broken files
        raise _damaged(found) from None
    return Picture(data=data, format=found, dimensions=(width, height))


def _damaged(found: str) -> ServiceError:
    return ServiceError("FILE_FORMAT_ILLEGAL", f"the {found} picture is damaged or truncated", 400)


_decode_slots = threading.BoundedSemaphore(DECODE_CONCURRENCY)


def decode_picture(checked: Picture) -> Picture:
    """The checked picture with its pixels decoded to RGB. Runs inside the engine pool job,
    after admission and the picTime reservation, and at most DECODE_CONCURRENCY at once per
    process (each decode holds up to ~7 bytes per pixel: MAX_PICTURE_PIXELS → ~120 MB)."""
    if checked.image is not None:
        return checked
    with _decode_slots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(checked.data), formats=[checked.format])
                if image.size[0] * image.size[1] > MAX_PICTURE_PIXELS:
                    raise _bomb(*image.size)
                image.load()
                rgb = _as_rgb(image)
        except ServiceError:
            raise
        except Exception:  # a file whose compressed data is broken despite a sound structure
            raise _damaged(checked.format) from None
    return Picture(data=checked.data, format=checked.format, image=rgb, dimensions=rgb.size)


def _bomb(width: int | None = None, height: int | None = None) -> ServiceError:
    size = f" ({width}×{height})" if width else ""
    return ServiceError(
        "FILE_FORMAT_ILLEGAL",
        f"the picture{size} has more than {MAX_PICTURE_PIXELS:,} pixels; refused as a possible decompression bomb",
        413,
    )


def _as_rgb(image: Image.Image) -> Image.Image:
    """RGB on white: transparent areas must not turn black and swallow dark text."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


# --- engines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A chosen engine: the name usage records show, its provider, and how to get the
    runner (`load` is called in a pool thread, so loading never blocks the event loop)."""

    name: str
    provider: str
    embedded: bool
    load: Callable[[], Any]


def _connection(session: Session, viewer: Viewer, name: str, kind: str, protocols: set[str]) -> ModelAiOnline:
    """The connection `name` picks, by the same visibility rule as everywhere else
    (`connections.find_by_name`): another user's private connection is a 404 worded
    exactly like a name that does not exist."""
    row = connections.find_by_name(session, viewer, name)
    if row is None:
        raise ServiceError("MODEL_ERROR", f"no {kind} engine named {name!r}; use 'embedded' or a connection name", 404)
    if row.protocol not in protocols:
        raise ServiceError(
            "MODEL_ERROR",
            f"connection {name!r} speaks {row.protocol!r}, not a {kind} protocol ({', '.join(sorted(protocols))})",
            400,
        )
    return row


def _secret(settings: Settings, row: ModelAiOnline) -> str | None:
    try:
        return security.decrypt_secret(settings, row.ai_token_encrypted)
    except ValueError:
        message = f"the secret of connection {row.ai_name!r} cannot be decrypted"
        raise ServiceError("MODEL_ERROR", message, 502) from None


def _guarded_url(settings: Settings, row: ModelAiOnline) -> str:
    """The connection's URL, after the SSRF guard (a user's own connection: public
    addresses only). The engine's client checks again, per connection it opens."""
    url = row.ai_api.strip()
    netguard.check_url(url, settings, allow_private=connections.reaches_private(row))
    return url


_clients_lock = threading.Lock()
_clients: OrderedDict[tuple, Any] = OrderedDict()
MAX_CACHED_CLIENTS = 64


def _client(key: tuple, build: Callable[[], Any]) -> Any:
    """An online engine object, built once per configuration and then reused (an OpenAI
    client sets up its HTTP connection pool and TLS context only once)."""
    with _clients_lock:
        if key in _clients:
            _clients.move_to_end(key)
            return _clients[key]
    client = build()
    with _clients_lock:
        client = _clients.setdefault(key, client)
        while len(_clients) > MAX_CACHED_CLIENTS:
            _clients.popitem(last=False)
    return client


def _online(settings: Settings, row: ModelAiOnline, kind: str) -> Engine:
    secret = _secret(settings, row)
    url = _guarded_url(settings, row)
    timeout = float(row.timeout or 30)
    model = row.ai_version or row.ai_name
    guard = netguard.Guard(settings, connections.reaches_private(row))
    key = (
        kind,
        row.protocol,
        url,
        hashlib.sha256((secret or "").encode()).hexdigest(),
        model,
        timeout,
        guard.allow_private,
        settings.allow_loopback,  # what else the guard decides by
        settings.allowed_private_hosts,
    )
    builders: dict[str, Callable[[], Any]] = {
        "voice": lambda: openai_audio.OpenAITranscriber(url, secret, model, timeout=timeout, guard=guard),
        "picture": lambda: openai_vision.OpenAIVisionReader(url, secret, model, timeout=timeout, guard=guard),
    }
    if row.protocol == iflytek_iat.PROTOCOL:
        builders["voice"] = lambda: iflytek_iat.IflytekIAT(url, parse_keys(secret), timeout=timeout, guard=guard)
    elif row.protocol == iflytek_ocr.PROTOCOL:
        builders["picture"] = lambda: iflytek_ocr.IflytekOCR(url, parse_keys(secret), timeout=timeout, guard=guard)
    return Engine(row.ai_name, row.protocol, False, lambda: _client(key, builders[kind]))


def _viewer(user_id: str | None) -> Viewer:
    """Who picks the engine: the signed-in user. Without one (the server's own default
    engine, e.g. a bench) only shared connections are visible."""
    return Viewer.for_user(user_id) if user_id else Viewer()


def voice_engine(
    session: Session, settings: Settings, name: str | None = None, *, user_id: str | None = None
) -> Engine:
    """The voice engine `name` picks (default `Settings.default_voice_engine`) for `user_id`."""
    name = (name or settings.default_voice_engine or EMBEDDED).strip()
    workers = settings.model_concurrency
    if name in VOICE_ALIASES:
        return Engine(EMBEDDED, "whisper", True, lambda: whisper_stt.shared(workers))
    return _online(settings, _connection(session, _viewer(user_id), name, "voice", VOICE_PROTOCOLS), "voice")


def picture_engine(
    session: Session, settings: Settings, name: str | None = None, *, user_id: str | None = None
) -> Engine:
    """The picture engine `name` picks (default `Settings.default_picture_engine`) for `user_id`."""
    name = (name or settings.default_picture_engine or EMBEDDED).strip()
    workers = settings.model_concurrency
    if name in PICTURE_ALIASES:
        return Engine(EMBEDDED, "rapidocr", True, lambda: rapid_ocr.shared(workers))
    viewer = _viewer(user_id)
    return _online(settings, _connection(session, viewer, name, "picture", PICTURE_PROTOCOLS), "picture")


# --- pools ----------------------------------------------------------------------------------


class MediaPool:
    """A thread pool with admission control: at most `workers + queue` jobs at once."""

    def __init__(self, name: str, workers: int, queue: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"meteor-{name}")
        self.slots = threading.BoundedSemaphore(max(1, workers) + max(0, queue))

    def admit(self) -> None:
        if not self.slots.acquire(blocking=False):
            raise ServiceError("MODEL_ERROR", "the recognition engines are busy; try again in a moment", 429)

    async def run(self, job: Callable[[], str]) -> str:
        """Run an admitted job; the slot is freed when the thread finishes, even if the
        awaiting request was cancelled meanwhile."""
        try:
            future = self.executor.submit(job)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _f: self.slots.release())
        return await asyncio.wrap_future(future)


_pools_lock = threading.Lock()
_pools: dict[tuple[str, int, int], MediaPool] = {}


def pool(settings: Settings, engine: Engine) -> MediaPool:
    """The process-wide pool an engine runs in."""
    kind = "embedded" if engine.embedded else "online"
    workers = settings.model_concurrency if engine.embedded else ONLINE_WORKERS
    key = (kind, workers, settings.embedded_queue_size)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = MediaPool(kind, workers, settings.embedded_queue_size)
        return _pools[key]


# --- charging and usage ---------------------------------------------------------------------


def record_usage(
    session: Session,
    *,
    request_id: str,
    user_id: str,
    kind: str,
    engine: Engine,
    status: str,
    latency_ms: int,
    audio_seconds: float | None = None,
    error: str | None = None,
) -> None:
    """One usage_records row for a recognition request (never holds a secret)."""
    academy = session.scalar(select(User.academy).where(User.id == user_id))
    session.add(
        UsageRecord(
            request_id=request_id,
            user_id=user_id,
            academy=academy,
            kind=kind,
            model=engine.name,
            provider=engine.provider,
            audio_seconds=audio_seconds,
            latency_ms=latency_ms,
            status=status,
            error=(error or "")[:255] or None,
        )
    )


def voice_tokens(settings: Settings, seconds: float) -> int:
    """What a clip costs in tokens: 0 unless voice costs quota, else seconds × rate, rounded up."""
    if not settings.voice_costs_quota:
        return 0
    return max(1, math.ceil(seconds * settings.voice_tokens_per_second))


@dataclass(frozen=True)
class Recognition:
    content: str
    request_id: str
    engine: str
    audio_seconds: float | None = None
    tokens: int = 0
    pic_times: int = 0
    language: str | None = None  # voice: the language the embedded engine transcribed in


async def _recognize(
    *,
    maker: sessionmaker[Session],
    settings: Settings,
    user_id: str,
    kind: str,
    choose: Callable[[Session], Engine],
    work: Callable[[Any], str],
    tokens: int = 0,
    pic_times: int = 0,
    audio_seconds: float | None = None,
) -> Recognition:
    request_id = uuid.uuid4().hex
    error_code = "AUDIO_TO_TEXT_ERROR" if kind == "voice" else "PICTURE_TO_TEXT_ERROR"

    def select_engine() -> tuple[Engine, float | None]:
        with maker() as session:
            chosen = choose(session)
            return chosen, pricing.engine_price(session, kind, chosen.name)  # quota policy: engine price

    engine, price = await anyio.to_thread.run_sync(select_engine)
    if price is not None:  # quota policy: tokens per minute of speech / picTimes per picture
        if kind == "voice":
            tokens = pricing.units(price, (audio_seconds or 0) / 60) if settings.voice_costs_quota else 0
        else:
            pic_times = pricing.units(price, 1)
    await anyio.to_thread.run_sync(  # quota policy: rpm / tpm, 429 + Retry-After
        lambda: rate_limits.admit_user(maker, settings, user_id=user_id, tokens=tokens)
    )
    media_pool = pool(settings, engine)
    media_pool.admit()
    reservation_id: str | None = None
    if tokens or pic_times:

        def reserve() -> str:
            with maker.begin() as session:
                return quota.reserve(
                    session,
                    user_id=user_id,
                    tokens=tokens,
                    pic_times=pic_times,
                    ttl=timedelta(seconds=settings.reservation_ttl_seconds),
                    request_id=request_id,
                    model=engine.name,
                )

        try:
            reservation_id = await anyio.to_thread.run_sync(reserve)
        except BaseException:
            media_pool.slots.release()
            raise

    def finish(status: str, latency_ms: int, error: str | None = None) -> None:
        with maker.begin() as session:
            if reservation_id is not None:
                if status == "ok":
                    quota.settle(session, reservation_id=reservation_id, tokens=tokens, pic_times=pic_times)
                else:
                    quota.release(session, reservation_id=reservation_id, note=(error or status)[:255])
            record_usage(
                session,
                request_id=request_id,
                user_id=user_id,
                kind=kind,
                engine=engine,
                status=status,
                latency_ms=latency_ms,
                audio_seconds=audio_seconds,
                error=error,
            )

    started = time.monotonic()
    language: str | None = None
    try:
        content = await media_pool.run(lambda: work(engine.load()))
        if isinstance(content, whisper_stt.Transcript):
            language = content.language
            content = content.text
    except BaseException as exc:
        latency = int((time.monotonic() - started) * 1000)
        if isinstance(exc, ServiceError):  # a damaged picture, an address the guard refused
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finish, "error", latency, exc.message)
            raise
        if isinstance(exc, ProviderError):
            status, message = "error", str(exc)
        elif isinstance(exc, Exception):
            status, message = "error", f"the {kind} engine failed: {type(exc).__name__}"
        else:
            status, message = "cancelled", "the request was cancelled"
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finish, status, latency, message)
        if isinstance(exc, ProviderError):
            raise ServiceError(error_code, message, exc.status) from None
        if isinstance(exc, Exception):
            raise ServiceError(error_code, message, 500) from exc
        raise
    latency = int((time.monotonic() - started) * 1000)
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(finish, "ok", latency)
    return Recognition(content, request_id, engine.name, audio_seconds, tokens, pic_times, language)


def voice_language(settings: Settings, language: str | None) -> str:
    """`auto`, `zh` or `en`: the request's choice, else `Settings.voice_language`.
    Anything else is MODEL_ERROR (422)."""
    try:
        return whisper_stt.normalize_language(language or settings.voice_language)
    except ValueError as exc:
        raise ServiceError("MODEL_ERROR", str(exc), 422) from None


def _transcribe(transcriber: Any, pcm: bytes, language: str) -> Any:
    """The embedded engine transcribes in the language asked for (or the one it detects);
    online engines have their own (iFlytek IAT: Mandarin)."""
    if isinstance(transcriber, whisper_stt.EmbeddedSpeech):
        return transcriber.transcribe_as(pcm, language)
    return transcriber.transcribe(pcm)


async def transcribe_voice(
    *,
    maker: sessionmaker[Session],
    settings: Settings,
    user_id: str,
    clip: Clip,
    engine: str | None = None,
    language: str | None = None,
) -> Recognition:
    """Transcribe a checked clip with the chosen engine, charging tokens only when voice
    costs quota, and record the usage. Raises MODEL_ERROR (unknown engine, 404; unknown
    language, 422; busy, 429), TOKEN_NOT_ENOUGH (402), AUDIO_TO_TEXT_ERROR (engine failure,
    502/504)."""
    chosen = voice_language(settings, language)
    return await _recognize(
        maker=maker,
        settings=settings,
        user_id=user_id,
        kind="voice",
        choose=lambda session: voice_engine(session, settings, engine, user_id=user_id),
        work=lambda transcriber: _transcribe(transcriber, clip.pcm, chosen),
        tokens=voice_tokens(settings, clip.seconds),
        audio_seconds=round(clip.seconds, 3),
    )


async def read_picture(
    *, maker: sessionmaker[Session], settings: Settings, user_id: str, picture: Picture, engine: str | None = None
) -> Recognition:
    """Read the text in a checked picture with the chosen engine: one picTime reserved
    before, charged on success, released on failure; the usage is recorded. Raises
    MODEL_ERROR (unknown engine, 404; busy, 429), PIC_TIMES_NOT_ENOUGH (402),
    PICTURE_TO_TEXT_ERROR (engine failure, 502/504)."""
    return await _recognize(
        maker=maker,
        settings=settings,
        user_id=user_id,
        kind="picture",
        choose=lambda session: picture_engine(session, settings, engine, user_id=user_id),
        work=lambda reader: reader.read(decode_picture(picture)),  # decoded only now: admitted and paid
        pic_times=1,
    )
