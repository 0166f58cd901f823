"""Uploads never touch the disk: no file is opened for writing and no temporary file is
made while a request is served, whatever the client calls its file."""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import pytest

from tests.factories import make_user, user_headers
from tests.media.samples import speech_pcm

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_watch = threading.Event()
_writes: list[tuple[str, object]] = []


def _audit(event: str, args: tuple, watch: threading.Event = _watch) -> None:
    # bound at definition: the hook outlives this module's globals at interpreter shutdown
    if not watch.is_set():
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return  # an already open descriptor
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS
        )
        if writing:
            _writes.append((event, path))
    elif event.startswith("tempfile."):
        _writes.append((event, args))


sys.addaudithook(_audit)


@pytest.fixture
def disk_watch():
    _writes.clear()
    _watch.set()
    try:
        yield _writes
    finally:
        _watch.clear()


def _big_noise_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 256, size=(1000, 1000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()  # ~3 MB: past Starlette's 1 MB in-memory spool size


def test_uploads_are_decoded_in_memory(client, maker, settings, connections, disk_watch):
    user = make_user(maker, settings, pic_times=1)
    headers = user_headers(client, user.username)
    picture = _big_noise_png()
    assert len(picture) > 2 * 1024 * 1024
    with tempfile.TemporaryFile() as probe:  # the watch does see a temporary file being made
        probe.write(b"x")
    assert disk_watch, "the audit hook saw nothing; the check below would prove nothing"
    disk_watch.clear()
    r = client.post(
        "/PictureToTextModel/chat",
        params={"model": "xf-ocr"},
        files={"file": ("../../shared name.png", picture, "image/png")},
        headers=headers,
    )
    assert r.status_code == 200 and r.json()["content"] == "1000x1000 PNG"
    r = client.post(
        "/voiceModel/chat", params={"model": "xf-iat"}, files={"file": ("clip.pcm", speech_pcm())}, headers=headers
    )
    assert r.status_code == 200
    # the iFlytek engines' local servers take JSON and websocket frames: they write nothing either
    assert disk_watch == []
    assert not any("shared name" in name for name in os.listdir(tempfile.gettempdir()))
