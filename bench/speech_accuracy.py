"""Accuracy of the embedded voice engine on espeak-ng speech: word error rate on English,
character error rate on Mandarin, with the language detected as the desktop client needs
it (it sends none), and the English-only Whisper tiny.en on the same Mandarin clips.

    make bench-speech           # = python -m bench.speech_accuracy

Material: the sentences of tests/media/samples.py (espeak-ng; Mandarin from tone-numbered
pinyin with the `cmn-latn-pinyin` voice, see there why), 16 kHz PCM. Prints each
transcript, the error rates and the median time per clip.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time


def main() -> int:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"bench-speech needs {', '.join(missing)}: apt-get install -y espeak-ng sox")
        return 2
    from backend.providers import whisper_stt
    from tests.media.samples import (
        CHINESE_SPEECH,
        ENGLISH_LINES,
        SENTENCE,
        character_error_rate,
        mandarin_pcm,
        speech_pcm,
        words,
    )
    from tests.media.samples import edit_distance as distance

    engine = whisper_stt.shared()
    engine.english(), engine.multilingual()  # load both before timing

    def timed(fn):
        started = time.perf_counter()
        value = fn()
        return value, (time.perf_counter() - started) * 1000

    english_refs = [SENTENCE, *ENGLISH_LINES]
    en_pairs, en_ms, en_detected = [], [], []
    for text in english_refs:
        pcm = speech_pcm(text)
        transcript, ms = timed(lambda pcm=pcm: engine.transcribe_as(pcm, "auto"))
        en_pairs.append((text, transcript.text))
        en_ms.append(ms)
        en_detected.append(transcript.language)
        print(f"en   {transcript.language}  {ms:7.0f} ms  {text!r} -> {transcript.text!r}")
    word_errors = sum(distance(words(ref), words(hyp)) for ref, hyp in en_pairs)
    wer = word_errors / sum(len(words(ref)) for ref, _ in en_pairs)

    zh_pairs, zh_ms, zh_detected, tiny_pairs = [], [], [], []
    for hanzi, pinyin in CHINESE_SPEECH:
        pcm = mandarin_pcm(pinyin)
        transcript, ms = timed(lambda pcm=pcm: engine.transcribe_as(pcm, "auto"))
        zh_pairs.append((hanzi, transcript.text))
        zh_ms.append(ms)
        zh_detected.append(transcript.language)
        tiny_pairs.append((hanzi, engine.english().transcribe(pcm)))
        print(f"zh   {transcript.language}  {ms:7.0f} ms  {hanzi} -> {transcript.text!r}")
    print()
    print("| material | engine (language detected) | detected right | error rate | median ms per clip |")
    print("|---|---|---|---|---|")
    print(
        f"| English, {len(en_pairs)} sentences | tiny.en after base's detection | "
        f"{en_detected.count('en')}/{len(en_detected)} | WER {wer:.2f} | {statistics.median(en_ms):.0f} |"
    )
    print(
        f"| Mandarin, {len(zh_pairs)} sentences | Whisper base | {zh_detected.count('zh')}/{len(zh_detected)} | "
        f"CER {character_error_rate(zh_pairs):.2f} | {statistics.median(zh_ms):.0f} |"
    )
    print(f"| Mandarin, same clips | tiny.en (the engine before) | - | CER {character_error_rate(tiny_pairs):.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
