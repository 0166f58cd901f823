"""Embedded OCR: RapidOCR (`rapidocr-onnxruntime`) with the Chinese + English PP-OCR models
that ship inside its wheel; the offline default picture engine.

A RapidOCR object keeps per-call state (its detector swaps a preprocessing step per image),
so one object must not serve two threads at once. The engine therefore holds a fixed set
of instances, one per pool worker, created once per process on first use and checked out
per call.
"""

from __future__ import annotations

import queue
import threading

from backend.providers.base import ProviderError
from backend.providers.recognition import Picture

MODEL_NAME = "rapidocr-ppocrv4"

_lock = threading.Lock()
_shared: EmbeddedRapidOCR | None = None


def _new_instance():
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        raise ProviderError("the embedded OCR engine is not installed: pip install rapidocr-onnxruntime", 500) from exc
    return RapidOCR()


def join_lines(boxes: list) -> str:
    """Text boxes ([corner points], text, score) as reading-order lines: boxes whose vertical
    centre falls inside a line's band join that line, left to right."""
    items = []
    for points, text, _score in boxes:
        ys = [p[1] for p in points]
        xs = [p[0] for p in points]
        items.append((min(ys), max(ys), min(xs), str(text)))
    items.sort(key=lambda item: (item[0] + item[1]) / 2)
    lines: list[list[tuple[float, float, float, str]]] = []
    for item in items:
        centre = (item[0] + item[1]) / 2
        if lines:
            top = min(i[0] for i in lines[-1])
            bottom = max(i[1] for i in lines[-1])
            if top <= centre <= bottom:
                lines[-1].append(item)
                continue
        lines.append([item])
    return "\n".join(" ".join(i[3] for i in sorted(line, key=lambda i: i[2])) for line in lines)


class EmbeddedRapidOCR:
    """RapidOCR over a fixed set of instances; `read` is safe to call from several threads."""

    name = MODEL_NAME

    def __init__(self, instances: int = 1) -> None:
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, instances)):
            self._idle.put(_new_instance())

    def read(self, picture: Picture) -> str:
        if picture.image is None:
            raise ProviderError("the picture was not decoded (media.decode_picture) before OCR", 500)
        engine = self._idle.get()
        try:
            result, _elapsed = engine(picture.image)
        except Exception as exc:  # onnxruntime / OpenCV errors
            raise ProviderError(f"the embedded OCR engine failed: {type(exc).__name__}", 500) from exc
        finally:
            self._idle.put(engine)
        return join_lines(result or [])


def shared(instances: int = 1) -> EmbeddedRapidOCR:
    """The process-wide engine, loaded on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = EmbeddedRapidOCR(instances)
        return _shared
