"""Real test material: speech from espeak-ng (converted with sox), pictures drawn with Pillow
in a Debian CJK font, and the two scores the tests print (word error rate, character
accuracy)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from functools import lru_cache

import pytest
from PIL import Image, ImageDraw, ImageFont

SENTENCE = "Please open the window before the meeting starts today"
ENGLISH_LINES = ("Meteor reads text out of pictures", "The quick brown fox jumps over 42 lazy dogs")
CHINESE_LINES = ("北京大学人工智能云平台", "学生和老师在配额内使用模型")
# Mandarin sentences and their pinyin. espeak-ng's `cmn` voice reads characters through its
# dictionary as tone-numbered pinyin and then speaks that pinyin with English letter rules
# (Debian's 1.52: "Chinese (Mandarin, latin as English)"), so the speech is made from the
# pinyin with its sibling voice `cmn-latn-pinyin`, which speaks it with Mandarin phonemes and tones.
CHINESE_SPEECH = (
    ("学生和老师", "xue2 sheng1 he2 lao3 shi1"),
    ("我们去公园散步", "wo3 men5 qu4 gong1 yuan2 san4 bu4"),
    ("北京大学", "bei3 jing1 da4 xue2"),
    ("今天天气很好", "jin1 tian1 tian1 qi4 hen3 hao3"),
    ("请打开窗户", "qing3 da3 kai1 chuang1 hu4"),
    ("我想学习中文", "wo3 xiang3 xue2 xi2 zhong1 wen2"),
    ("谢谢你的帮助", "xie4 xie4 ni3 de5 bang1 zhu4"),
    ("我们明天见", "wo3 men5 ming2 tian1 jian4"),
    ("这是我的电脑", "zhe4 shi4 wo3 de5 dian4 nao3"),
    ("欢迎来到学校", "huan1 ying2 lai2 dao4 xue2 xiao4"),
)
CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (apt-get install -y espeak-ng sox fonts-wqy-microhei; .ci/run does it)")


@lru_cache(maxsize=8)
def espeak_wav(text: str = SENTENCE) -> bytes:
    """espeak-ng speaking `text`: a 22050 Hz mono WAV, in memory."""
    need("espeak-ng")
    return subprocess.run(["espeak-ng", "--stdout", "-s", "150", text], capture_output=True, check=True).stdout


@lru_cache(maxsize=8)
def sox_convert(wav: bytes, *args: str) -> bytes:
    """`wav` converted by sox (stdin to stdout) with output options `args`."""
    need("sox")
    return subprocess.run(["sox", "-t", "wav", "-", *args, "-"], input=wav, capture_output=True, check=True).stdout


@lru_cache(maxsize=32)
def mandarin_wav(pinyin: str) -> bytes:
    """espeak-ng's Mandarin voice speaking tone-numbered pinyin: a 22050 Hz mono WAV."""
    need("espeak-ng")
    command = ["espeak-ng", "--stdout", "-v", "cmn-latn-pinyin", "-s", "130", pinyin]
    return subprocess.run(command, capture_output=True, check=True).stdout


def mandarin_pcm(pinyin: str) -> bytes:
    return sox_convert(mandarin_wav(pinyin), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw")


def speech_pcm(text: str = SENTENCE) -> bytes:
    """espeak-ng speech as raw PCM, 16 kHz 16-bit little-endian mono (what the seed's client sends)."""
    return sox_convert(espeak_wav(text), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw")


def speech_wav_stereo_44k(text: str = SENTENCE) -> bytes:
    return sox_convert(espeak_wav(text), "-r", "44100", "-c", "2", "-b", "16", "-t", "wav")


def cjk_font(size: int) -> ImageFont.FreeTypeFont:
    for path in CJK_FONTS:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    pytest.fail("no CJK font (apt-get install -y fonts-wqy-microhei; .ci/run does it)")


def render_lines(lines: tuple[str, ...], *, size: int = 36, fmt: str = "PNG", width: int = 900) -> bytes:
    """Black lines of text on white, encoded as `fmt`."""
    font = cjk_font(size)
    image = Image.new("RGB", (width, 40 + int(size * 1.9) * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((30, 20 + int(size * 1.9) * index), line, font=font, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def small_picture(fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 220, 240)).save(buffer, format=fmt)
    return buffer.getvalue()


def edit_distance(a: list | str, b: list | str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = words(reference)
    return edit_distance(ref, words(hypothesis)) / len(ref)


def character_accuracy(reference: str, hypothesis: str) -> float:
    """1 − character error rate, whitespace ignored (OCR may split or join words)."""
    ref = re.sub(r"\s+", "", reference)
    hyp = re.sub(r"\s+", "", hypothesis)
    return max(0.0, 1 - edit_distance(ref, hyp) / len(ref))


def character_errors(reference: str, hypothesis: str) -> int:
    """Edits between two Chinese texts, whitespace and punctuation ignored."""
    return edit_distance(re.sub(r"[\s\W]+", "", reference), re.sub(r"[\s\W]+", "", hypothesis))


def character_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Total edits over total reference characters, for (reference, hypothesis) pairs."""
    edits = sum(character_errors(ref, hyp) for ref, hyp in pairs)
    return edits / sum(len(re.sub(r"[\s\W]+", "", ref)) for ref, _ in pairs)
