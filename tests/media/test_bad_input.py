"""Every bad upload gets the seed's error code, a clear message and the right status, and
leaves the database exactly as it was (no charge, no ledger row, no usage row)."""

from __future__ import annotations

import io
import struct
import wave
from functools import lru_cache

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.server import create_app
from tests.factories import make_settings, make_user, user_headers
from tests.media.helpers import snapshot
from tests.media.samples import small_picture

VOICE = "/voiceModel/chat"
PICTURE = "/PictureToTextModel/chat"


def empty_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
    return buffer.getvalue()


def broken_wav() -> bytes:
    # a RIFF/WAVE header whose fmt chunk claims an impossible format and no data chunk
    fmt = struct.pack("<HHIIHH", 0x7777, 0, 0, 0, 0, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"junk" * 10
    return b"RIFF" + struct.pack("<I", len(body)) + body


@lru_cache(maxsize=4)
def bomb_png(size: tuple[int, int]) -> bytes:
    """A small, valid PNG that would inflate to `size` pixels."""
    buffer = io.BytesIO()
    Image.new("1", size, 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def truncated_png() -> bytes:
    data = small_picture("PNG", (300, 300))
    return data[: len(data) // 2]


# (case, endpoint, how to send, status, code, words in the message)
CASES = [
    ("voice empty multipart file", VOICE, {"files": {"file": ("a.pcm", b"")}}, 400, "GET_FILE_FAIL", "empty"),
    ("voice empty raw body", VOICE, {"content": b""}, 400, "GET_FILE_FAIL", "empty"),
    ("voice no file field", VOICE, {"files": {"other": ("a.pcm", b"\x00\x00")}}, 400, "GET_FILE_FAIL", "'file'"),
    (
        "voice wrong extension",
        VOICE,
        {"files": {"file": ("talk.mp3", b"\x00\x00")}},
        400,
        "FILE_FORMAT_ILLEGAL",
        ".mp3",
    ),
    (
        "voice .wav holding raw PCM",
        VOICE,
        {"files": {"file": ("a.wav", b"\x01\x02" * 50)}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "claims to be WAV",
    ),
    (
        "voice .pcm holding a PNG",
        VOICE,
        {"files": {"file": ("a.pcm", small_picture())}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "PNG",
    ),
    (
        "voice audio/wav body not a WAV",
        VOICE,
        {"content": b"\x00" * 10, "headers": {"Content-Type": "audio/wav"}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "WAV",
    ),
    ("voice odd-length PCM", VOICE, {"files": {"file": ("a.pcm", b"\x00" * 3201)}}, 400, "FILE_FORMAT_ILLEGAL", "odd"),
    ("voice odd-length raw body", VOICE, {"content": b"\x00" * 7}, 400, "FILE_FORMAT_ILLEGAL", "odd"),
    (
        "voice zero-length WAV clip",
        VOICE,
        {"files": {"file": ("a.wav", empty_wav())}},
        400,
        "AUDIO_TO_TEXT_ERROR",
        "zero-length",
    ),
    (
        "voice damaged WAV",
        VOICE,
        {"files": {"file": ("a.wav", broken_wav())}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "cannot be decoded",
    ),
    ("picture empty file", PICTURE, {"files": {"file": ("a.png", b"")}}, 400, "GET_FILE_FAIL", "empty"),
    (
        "picture no file field",
        PICTURE,
        {"data": {"model": "embedded"}, "files": {"x": ("a", b"1")}},
        400,
        "GET_FILE_FAIL",
        "'file'",
    ),
    (
        "picture wrong extension",
        PICTURE,
        {"files": {"file": ("a.gif", small_picture("GIF"))}},
        400,
        "FILE_FORMAT_ILLEGAL",
        ".gif",
    ),
    ("picture text file", PICTURE, {"files": {"file": ("notes.txt", b"hello")}}, 400, "FILE_FORMAT_ILLEGAL", ".txt"),
    (
        "picture .png holding a JPEG",
        PICTURE,
        {"files": {"file": ("a.png", small_picture("JPEG"))}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "JPEG",
    ),
    (
        "picture .jpg holding text",
        PICTURE,
        {"files": {"file": ("a.jpg", b"not a picture at all")}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "not a picture",
    ),
    (
        "picture GIF bytes named .png",
        PICTURE,
        {"files": {"file": ("a.png", small_picture("GIF"))}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "GIF",
    ),
    (
        "picture truncated PNG",
        PICTURE,
        {"files": {"file": ("a.png", truncated_png())}},
        400,
        "FILE_FORMAT_ILLEGAL",
        "damaged",
    ),
    ("picture raw body without image type", PICTURE, {"content": small_picture()}, 400, "GET_FILE_FAIL", "multipart"),
    (
        "picture bomb 20000x20000",
        PICTURE,
        {"files": {"file": ("a.png", "BOMB-20000")}},
        413,
        "FILE_FORMAT_ILLEGAL",
        "decompression bomb",
    ),
    (
        "picture bomb 8000x6000",
        PICTURE,
        {"files": {"file": ("a.png", "BOMB-8000")}},
        413,
        "FILE_FORMAT_ILLEGAL",
        "decompression bomb",
    ),
    (
        "picture model name too long",
        PICTURE,
        {"params": {"model": "m" * 51}, "files": {"file": ("a.png", small_picture())}},
        422,
        "MODEL_ERROR",
        "model",
    ),
]


def _materialize(kwargs: dict) -> dict:
    files = kwargs.get("files")
    if files and isinstance(files.get("file", (None, None))[1], str):
        name, marker = files["file"]
        size = (20000, 20000) if marker == "BOMB-20000" else (8000, 6000)
        return {**kwargs, "files": {"file": (name, bomb_png(size))}}
    return kwargs


@pytest.mark.parametrize("case, url, kwargs, status, code, words", CASES, ids=[c[0] for c in CASES])
def test_bad_upload_is_refused_with_the_seed_code_and_changes_nothing(
    client, maker, settings, case, url, kwargs, status, code, words
):
    user = make_user(maker, settings, tokens=100, pic_times=5)
    headers = user_headers(client, user.username)
    before = snapshot(maker, user.id)
    kwargs = _materialize(kwargs)
    r = client.post(url, **{**kwargs, "headers": {**headers, **kwargs.get("headers", {})}})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and words.lower() in body["msg"].lower(), body
    assert snapshot(maker, user.id) == before


def _over_limit_app(db_url, tmp_path, limit: int | None):
    overrides = {} if limit is None else {"upload_max_bytes": limit}
    return create_app(make_settings(db_url, tmp_path, **overrides), playground=False)


@pytest.mark.parametrize("limit", [None, 4096], ids=["default 10 MB", "configured 4 KB"])
@pytest.mark.parametrize("url", [VOICE, PICTURE])
def test_over_limit_upload_is_413(db_url, tmp_path, maker, url, limit):
    with TestClient(_over_limit_app(db_url, tmp_path, limit)) as client:
        settings = client.app.state.settings
        user = make_user(maker, settings, tokens=100, pic_times=5)
        headers = user_headers(client, user.username)
        before = snapshot(maker, user.id)
        size = settings.upload_max_bytes + 2  # even: a valid PCM length
        r = client.post(
            url, files={"file": ("big.png" if url == PICTURE else "big.pcm", b"\x00" * size)}, headers=headers
        )
        assert r.status_code == 413 and r.json()["code"] == "GET_FILE_FAIL" and "limit" in r.json()["msg"]
        if url == VOICE:  # the raw body is held to the limit too, while it streams in
            raw = {**headers, "Content-Type": "application/octet-stream"}
            r = client.post(url, content=b"\x00" * size, headers=raw)
            assert r.status_code == 413 and r.json()["code"] == "GET_FILE_FAIL"

            def chunks():
                for _ in range(size // 1024 + 1):
                    yield b"\x00" * 1024

            r = client.post(url, content=chunks(), headers=raw)  # no Content-Length: counted as it arrives
            assert r.status_code == 413 and r.json()["code"] == "GET_FILE_FAIL"
        assert snapshot(maker, user.id) == before


def test_just_under_the_limit_is_accepted(db_url, tmp_path, maker, connections):
    with TestClient(_over_limit_app(db_url, tmp_path, 4096)) as client:
        user = make_user(maker, client.app.state.settings)
        r = client.post(
            VOICE,
            params={"model": "oa-audio"},
            files={"file": ("a.pcm", b"\x00" * 4096)},
            headers=user_headers(client, user.username),
        )
    assert r.status_code == 200 and r.json()["content"].startswith("heard 2048 samples")
