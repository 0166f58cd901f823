"""Voice and picture recognition: each engine through its endpoint against the same engine
called directly in-process, in one run.

    make bench-media            # = python -m bench.media [--runs N]

Meteor runs under uvicorn (in a thread of this process) on a throw-away SQLite database;
every endpoint call is a real HTTP request with a Bearer token that authenticates, reads
and checks the upload, picks the engine, reserves/settles a picTime (pictures) and writes
a usage row. The direct call is the bare engine object on the same material. Online
engines talk to the local protocol servers of the tests (signature-checking iFlytek IAT
and OCR, an OpenAI-compatible fake), so their time is the protocol round trip, not a
model. Printed: median latency of each (direct and endpoint calls alternate, so load from
elsewhere falls on both alike) and the ratio endpoint / direct.

Material: 3.7 s of espeak-ng speech (sox to 16 kHz PCM) and a 900×180 PNG with two English
lines. Needs espeak-ng and sox (apt-get install -y espeak-ng sox fonts-wqy-microhei).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx


def _elapsed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _paired_medians(direct: Callable[[], object], through: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median latency of each, measured in alternation so that load from anything else on
    the machine falls on both alike."""
    direct_ms, through_ms = [], []
    for _ in range(runs):
        direct_ms.append(_elapsed_ms(direct))
        through_ms.append(_elapsed_ms(through))
    return statistics.median(direct_ms), statistics.median(through_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed calls per engine and path (after one warm-up)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"bench-media needs {', '.join(missing)}: apt-get install -y espeak-ng sox fonts-wqy-microhei")
        return 2

    from backend.media import recognize as media
    from backend.providers import rapid_ocr, whisper_stt
    from backend.providers.iflytek_iat import IflytekIAT
    from backend.providers.iflytek_ocr import IflytekOCR
    from backend.providers.openai_audio import OpenAITranscriber
    from backend.providers.openai_vision import OpenAIVisionReader
    from backend.server import create_app
    from db import migrate
    from db.session import get_sessionmaker
    from tests.factories import PASSWORD, make_settings, make_user
    from tests.media.fakes import FAKE_KEYS, FAKE_OPENAI_KEY, OCR_PATH, IatServer, ocr_app, openai_app, serve_asgi
    from tests.media.helpers import add_connection
    from tests.media.samples import ENGLISH_LINES, render_lines, speech_pcm

    pcm = speech_pcm()
    png = render_lines(ENGLISH_LINES)
    picture = media.decode_picture(media.picture(png, "page.png"))

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        url = f"sqlite:///{data_dir / 'bench.db'}"
        migrate.upgrade(url)
        settings = make_settings(url, data_dir)
        maker = get_sessionmaker(url)
        iat = stack.enter_context(IatServer())
        ocr_url = stack.enter_context(serve_asgi(ocr_app())) + OCR_PATH
        openai_url = stack.enter_context(serve_asgi(openai_app())) + "/v1"
        add_connection(maker, settings, name="xf-iat", protocol="iflytek-iat", url=iat.url, secret=FAKE_KEYS.pack())
        add_connection(maker, settings, name="xf-ocr", protocol="iflytek-ocr", url=ocr_url, secret=FAKE_KEYS.pack())
        add_connection(
            maker,
            settings,
            name="oa-audio",
            protocol="openai-audio",
            url=openai_url,
            secret=FAKE_OPENAI_KEY,
            version="w",
        )
        add_connection(
            maker, settings, name="oa-vision", protocol="openai-vision", url=openai_url, secret=FAKE_OPENAI_KEY
        )
        user = make_user(maker, settings, username="bench", pic_times=1_000_000)
        base = stack.enter_context(serve_asgi(create_app(settings, playground=False)))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=300))
        token = http.post("/auth/login", json={"username": user.username, "password": PASSWORD}).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        def endpoint(path: str, model: str, name: str, data: bytes) -> Callable[[], object]:
            def call() -> object:
                params = {"model": model, **({"language": "en"} if path == "/voiceModel/chat" else {})}
                r = http.post(path, params=params, files={"file": (name, data)}, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"{path} with {model} answered {r.status_code}: {r.text}")
                return r.json()["content"]

            return call

        workers = settings.model_concurrency
        voice, pictures = "/voiceModel/chat", "/PictureToTextModel/chat"
        iat_engine = IflytekIAT(iat.url, FAKE_KEYS, timeout=30)
        ocr_engine = IflytekOCR(ocr_url, FAKE_KEYS)
        audio_engine = OpenAITranscriber(openai_url, FAKE_OPENAI_KEY, "w")
        vision_engine = OpenAIVisionReader(openai_url, FAKE_OPENAI_KEY, "v")
        cases = [
            (
                "voice    embedded whisper tiny.en",
                lambda: whisper_stt.shared(workers).transcribe(pcm, "en"),
                voice,
                "embedded",
            ),
            ("voice    iFlytek IAT (local ws)", lambda: iat_engine.transcribe(pcm), voice, "xf-iat"),
            ("voice    OpenAI /audio (local)", lambda: audio_engine.transcribe(pcm), voice, "oa-audio"),
            ("picture  embedded RapidOCR", lambda: rapid_ocr.shared(workers).read(picture), pictures, "embedded"),
            ("picture  iFlytek OCR (local)", lambda: ocr_engine.read(picture), pictures, "xf-ocr"),
            ("picture  OpenAI vision (local)", lambda: vision_engine.read(picture), pictures, "oa-vision"),
        ]
        print(
            f"median of {args.runs} alternating calls each after a warm-up; "
            f"speech {len(pcm) / 32000:.1f} s, picture 900x180"
        )
        print(f"{'engine':36} {'direct ms':>10} {'endpoint ms':>12} {'ratio':>7} {'overhead ms':>12}")
        for label, direct, path, model in cases:
            through = endpoint(path, model, "s.pcm", pcm) if path == voice else endpoint(path, model, "p.png", png)
            direct()
            through()
            direct_ms, endpoint_ms = _paired_medians(direct, through, args.runs)
            ratio = endpoint_ms / direct_ms
            print(f"{label:36} {direct_ms:10.1f} {endpoint_ms:12.1f} {ratio:7.2f} {endpoint_ms - direct_ms:12.1f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
