"""The two small interfaces behind voice and picture recognition.

- `Transcriber.transcribe(pcm)` takes a clip as raw PCM (16 kHz, 16-bit little-endian,
  mono) and returns its text.
- `PictureReader.read(picture)` takes a validated, decoded `Picture` and returns
  the text found in it, one line per line of text.

Both are synchronous and blocking: `backend.media.recognize` runs them off the event loop
in bounded thread pools. Failures are `ProviderError` (502) / `ProviderTimeout` (504)
from `backend.providers.base`; their messages name the cause and never hold a key.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

SAMPLE_RATE = 16000
SAMPLE_WIDTH = 2  # bytes: 16-bit little-endian

MIME_BY_FORMAT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


@dataclass(frozen=True)
class Picture:
    """An uploaded picture: the bytes as sent, the format Pillow found in them, its
    dimensions (from the header) and, once `media.decode_picture` ran (in the engine pool,
    after the caller was charged), the decoded RGB image, so no engine decodes it again."""

    data: bytes
    format: str  # JPEG, PNG, WEBP or BMP
    image: Image.Image | None = None
    dimensions: tuple[int, int] | None = None

    @property
    def mime(self) -> str:
        return MIME_BY_FORMAT[self.format]

    @property
    def size(self) -> tuple[int, int]:
        if self.image is not None:
            return self.image.size
        assert self.dimensions is not None
        return self.dimensions

    def encoded(self, formats: tuple[str, ...] = ("JPEG", "PNG", "BMP")) -> tuple[bytes, str]:
        """The picture in one of `formats`: the original bytes when they already are,
        otherwise re-encoded as PNG (lossless)."""
        if self.format in formats:
            return self.data, self.format
        if self.image is None:
            raise ValueError("the picture is not decoded yet (media.decode_picture)")
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue(), "PNG"


def pcm_seconds(pcm: bytes) -> float:
    """Duration of a 16 kHz 16-bit mono PCM clip."""
    return len(pcm) / (SAMPLE_RATE * SAMPLE_WIDTH)


def pcm_to_wav(pcm: bytes) -> bytes:
    """Wrap raw 16 kHz 16-bit mono PCM in a WAV header, in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm)
    return buffer.getvalue()


class Transcriber(Protocol):
    name: str

    def transcribe(self, pcm: bytes) -> str: ...


class PictureReader(Protocol):
    name: str

    def read(self, picture: Picture) -> str: ...
