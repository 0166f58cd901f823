"""The embedded engines on real material: espeak-ng speech and Pillow-drawn text."""

from __future__ import annotations

import io
import threading

import pytest

from backend.errors import ServiceError
from backend.media import recognize as media
from backend.providers import rapid_ocr, whisper_stt
from backend.providers.recognition import pcm_seconds
from tests.media.samples import (
    CHINESE_LINES,
    CHINESE_SPEECH,
    ENGLISH_LINES,
    SENTENCE,
    character_accuracy,
    character_error_rate,
    mandarin_pcm,
    render_lines,
    speech_pcm,
    speech_wav_stereo_44k,
    word_error_rate,
)

pytestmark = pytest.mark.slow


def test_whisper_transcribes_espeak_speech_from_16k_pcm():
    pcm = speech_pcm()
    assert len(pcm) % 2 == 0 and 1.0 < pcm_seconds(pcm) < 10.0
    text = whisper_stt.shared().transcribe(pcm)
    wer = word_error_rate(SENTENCE, text)
    print(f"\nembedded whisper on espeak-ng speech: {text!r}  WER={wer:.3f}")
    assert wer <= 0.25


def test_wav_at_44k_stereo_is_resampled_to_the_same_transcript():
    clip = media.voice_clip(speech_wav_stereo_44k(), "speech.wav")
    assert clip.source == "wav"
    # resampled to 16 kHz mono: the same duration as the sox-made 16 kHz PCM, within 50 ms
    assert abs(clip.seconds - pcm_seconds(speech_pcm())) < 0.05
    text = whisper_stt.shared().transcribe(clip.pcm)
    wer = word_error_rate(SENTENCE, text)
    print(f"\nembedded whisper on 44.1 kHz stereo WAV: {text!r}  WER={wer:.3f}")
    assert wer <= 0.25


def test_the_embedded_engine_understands_mandarin_and_the_english_model_does_not():
    """espeak-ng Mandarin, language detected: every clip is taken for Chinese and the
    character error rate stays under a generous bound that Whisper tiny.en (English only,
    the engine before) cannot meet on the same clips."""
    engine = whisper_stt.shared()
    pairs, english_only = [], []
    for hanzi, pinyin in CHINESE_SPEECH[:6]:
        pcm = mandarin_pcm(pinyin)
        transcript = engine.transcribe_as(pcm, "auto")
        assert transcript.language == "zh", (hanzi, transcript)
        pairs.append((hanzi, transcript.text))
        english_only.append((hanzi, engine.english().transcribe(pcm)))
    cer, cer_english_only = character_error_rate(pairs), character_error_rate(english_only)
    print(f"\nembedded Mandarin: {pairs}  CER={cer:.3f}; tiny.en on the same clips: CER={cer_english_only:.3f}")
    assert cer <= 0.75
    assert cer_english_only > 0.75


def test_decoding_loops_are_trimmed_but_doubled_words_kept():
    assert whisper_stt.trim_loops("天天天天天天天天") == "天天"
    assert whisper_stt.trim_loops("谢谢你，天天见") == "谢谢你，天天见"


def test_english_is_detected_and_read_by_the_english_model():
    engine = whisper_stt.shared()
    transcript = engine.transcribe_as(speech_pcm(), "auto")
    assert transcript.language == "en"
    assert word_error_rate(SENTENCE, transcript.text) <= 0.25
    assert engine.transcribe_as(speech_pcm(), "en").language == "en"
    assert engine.transcribe_as(mandarin_pcm(CHINESE_SPEECH[0][1]), "zh").language == "zh"


def test_languages_are_named_in_the_spellings_clients_use():
    assert [whisper_stt.normalize_language(x) for x in ("", None, "AUTO", "zh_cn", "zh-CN", "cmn", "en_us")] == [
        "auto",
        "auto",
        "auto",
        "zh",
        "zh",
        "zh",
        "en",
    ]
    with pytest.raises(ValueError):
        whisper_stt.normalize_language("fr")


def test_the_multilingual_model_is_loaded_from_its_packages_and_checked():
    directory, files = whisper_stt.multilingual_files()
    assert "site-packages" in str(directory)
    assert set(files) == {"model.bin", "config.json", "vocabulary.json", "tokenizer.json"}


def test_whisper_loads_once_per_process():
    engines = []
    threads = [threading.Thread(target=lambda: engines.append(whisper_stt.shared())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(engines) == 4 and all(e is engines[0] for e in engines)


@pytest.mark.parametrize(
    "language, lines, fmt",
    [("English", ENGLISH_LINES, "PNG"), ("Chinese", CHINESE_LINES, "JPEG")],
)
def test_rapidocr_reads_rendered_lines(language, lines, fmt):
    picture = media.decode_picture(media.picture(render_lines(lines, fmt=fmt), f"lines.{fmt.lower()}"))
    text = rapid_ocr.shared().read(picture)
    accuracy = character_accuracy("".join(lines), text)
    print(f"\nembedded RapidOCR, {language}: {text!r}  character accuracy={accuracy:.3f}")
    assert accuracy >= 0.9
    assert len(text.splitlines()) == len(lines)  # boxes on one line are joined, lines kept apart


def test_ocr_lines_are_joined_in_reading_order():
    boxes = [
        [[[300, 100], [360, 100], [360, 140], [300, 140]], "fox", 0.9],
        [[[30, 30], [500, 30], [500, 70], [30, 70]], "first line", 0.9],
        [[[30, 102], [290, 102], [290, 142], [30, 142]], "The quick brown", 0.9],
    ]
    assert rapid_ocr.join_lines(boxes) == "first line\nThe quick brown fox"
    assert rapid_ocr.join_lines([]) == ""


def test_transparent_png_is_read_on_white():
    from PIL import Image, ImageDraw

    from tests.media.samples import cjk_font

    image = Image.new("RGBA", (700, 90), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((20, 20), "Transparent background", font=cjk_font(36), fill=(0, 0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    picture = media.decode_picture(media.picture(buffer.getvalue(), "t.png"))
    assert picture.image.mode == "RGB" and picture.image.getpixel((2, 2)) == (255, 255, 255)
    accuracy = character_accuracy("Transparent background", rapid_ocr.shared().read(picture))
    assert accuracy >= 0.9


def test_media_pool_admits_at_most_workers_plus_queue():
    pool = media.MediaPool("test", workers=1, queue=1)
    pool.admit()
    pool.admit()
    with pytest.raises(ServiceError) as refused:
        pool.admit()
    assert refused.value.status == 429 and refused.value.code == "MODEL_ERROR"
    pool.slots.release()
    pool.slots.release()


def test_media_pool_runs_jobs_off_the_event_loop_and_frees_the_slot():
    import asyncio

    pool = media.MediaPool("offloop", workers=1, queue=0)

    async def main() -> tuple[str, str]:
        pool.admit()
        worker = await pool.run(lambda: threading.current_thread().name)
        pool.admit()  # the slot came back when the job finished
        again = await pool.run(lambda: threading.current_thread().name)
        return worker, again

    worker, again = asyncio.run(main())
    assert worker.startswith("meteor-offloop") and worker != threading.main_thread().name
    assert again.startswith("meteor-offloop")
