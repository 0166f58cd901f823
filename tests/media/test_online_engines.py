"""The iFlytek and OpenAI-compatible clients against local servers that speak their
protocols (and, for iFlytek, check the request signature)."""

from __future__ import annotations

import base64
import json

import pytest

from backend.media import recognize as media
from backend.providers.base import ProviderError
from backend.providers.iflytek_iat import FRAME_BYTES, IflytekIAT
from backend.providers.iflytek_keys import IflytekKeys, parse_keys
from backend.providers.iflytek_ocr import IflytekOCR
from backend.providers.openai_audio import OpenAITranscriber
from backend.providers.openai_vision import OpenAIVisionReader
from backend.providers.recognition import pcm_to_wav
from tests.media.fakes import (
    FAKE_KEYS,
    FAKE_OPENAI_KEY,
    OCR_PATH,
    IatServer,
    ocr_app,
    openai_app,
    serve_asgi,
)
from tests.media.samples import small_picture

PCM = bytes(range(256)) * 80  # 20480 bytes: three frames of at most 8000


def wrong_secret() -> IflytekKeys:
    return IflytekKeys(FAKE_KEYS.app_id, FAKE_KEYS.api_key, "not-the-secret-" + "x" * 17)


# --- iFlytek IAT -----------------------------------------------------------------------


def test_iat_client_streams_signed_frames_and_joins_the_words():
    with IatServer() as server:
        text = IflytekIAT(server.url, FAKE_KEYS, frame_interval=0, timeout=10).transcribe(PCM)
    assert text == "你好，世界"
    assert server.refused == 0 and server.problems == []
    (session,) = server.sessions
    assert bytes(session["audio"]) == PCM  # every byte arrived, in order
    statuses = [f["data"]["status"] for f in session["frames"]]
    assert statuses == [0, 1, 1, 2]
    assert session["frames"][0]["common"] == {"app_id": FAKE_KEYS.app_id}
    assert session["frames"][0]["business"]["language"] == "zh_cn"
    assert all(len(base64.b64decode(f["data"]["audio"])) <= FRAME_BYTES for f in session["frames"])


def test_iat_server_refuses_a_wrong_signature_and_the_client_says_so():
    with IatServer() as server, pytest.raises(ProviderError) as refused:
        IflytekIAT(server.url, wrong_secret(), frame_interval=0, timeout=10).transcribe(PCM)
    assert server.refused == 1 and server.sessions == []
    message = str(refused.value)
    assert "HTTP 401" in message and "secret" in message
    assert wrong_secret().api_secret not in message and FAKE_KEYS.api_key not in message


def test_iat_error_answer_becomes_a_provider_error():
    with IatServer(error=(10165, "invalid handle")) as server, pytest.raises(ProviderError, match="10165.*invalid"):
        IflytekIAT(server.url, FAKE_KEYS, frame_interval=0, timeout=10).transcribe(PCM)


def test_iat_wrong_app_id_is_reported_by_the_server():
    keys = IflytekKeys("other-app", FAKE_KEYS.api_key, FAKE_KEYS.api_secret)
    with IatServer() as server, pytest.raises(ProviderError, match="10105"):
        IflytekIAT(server.url, keys, frame_interval=0, timeout=10).transcribe(PCM)


def test_iat_unreachable_server_is_a_provider_error():
    with IatServer() as server:
        url = server.url
    with pytest.raises(ProviderError, match="connection failed"):
        IflytekIAT(url, FAKE_KEYS, frame_interval=0, timeout=5).transcribe(PCM)


def test_iflytek_keys_accept_both_packings_and_refuse_garbage():
    packed = FAKE_KEYS.pack()
    assert parse_keys(packed) == FAKE_KEYS
    assert parse_keys(json.dumps({"app_id": "a", "api_key": "b", "api_secret": "c"})) == IflytekKeys("a", "b", "c")
    for bad in (None, "", "only:two", '{"app_id": "a"}', "a::c"):
        with pytest.raises(ProviderError):
            parse_keys(bad)
    assert FAKE_KEYS.api_secret not in repr(FAKE_KEYS)


# --- iFlytek OCR -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt, sent", [("PNG", "PNG"), ("JPEG", "JPEG"), ("BMP", "BMP"), ("WEBP", "PNG")])
def test_ocr_client_sends_a_signed_request_and_decodes_whole_text(fmt, sent):
    picture = media.decode_picture(media.picture(small_picture(fmt, (123, 45))))
    app = ocr_app()
    with serve_asgi(app) as base:
        text = IflytekOCR(base + OCR_PATH, FAKE_KEYS, timeout=10).read(picture)
    assert text == f"123x45 {sent}"  # the fake decoded the very picture (WebP goes as PNG)
    assert app.state.calls == 1 and app.state.refused == 0


def test_ocr_server_refuses_a_wrong_signature():
    app = ocr_app()
    with serve_asgi(app) as base, pytest.raises(ProviderError) as refused:
        IflytekOCR(base + OCR_PATH, wrong_secret(), timeout=10).read(media.picture(small_picture()))
    assert app.state.refused == 1 and app.state.calls == 0
    assert "HTTP 401" in str(refused.value) and wrong_secret().api_secret not in str(refused.value)


def test_ocr_error_code_becomes_a_provider_error():
    keys = IflytekKeys("other-app", FAKE_KEYS.api_key, FAKE_KEYS.api_secret)
    with serve_asgi(ocr_app()) as base, pytest.raises(ProviderError, match="10313"):
        IflytekOCR(base + OCR_PATH, keys, timeout=10).read(media.picture(small_picture()))


def test_ocr_chinese_whole_text_survives_the_base64_json_round_trip():
    with serve_asgi(ocr_app(reader=lambda image: "北京大学\n人工智能")) as base:
        text = IflytekOCR(base + OCR_PATH, FAKE_KEYS, timeout=10).read(media.picture(small_picture()))
    assert text == "北京大学\n人工智能"


# --- OpenAI-compatible -----------------------------------------------------------------


def test_openai_transcription_sends_a_16k_mono_wav():
    app = openai_app()
    with serve_asgi(app) as base:
        text = OpenAITranscriber(base + "/v1", FAKE_OPENAI_KEY, "whisper-1", timeout=10).transcribe(PCM)
    assert text == f"heard {len(PCM) // 2} samples at 16000 Hz mono 16-bit"
    assert app.state.models == ["whisper-1"]


def test_openai_vision_sends_the_picture_as_a_data_url():
    app = openai_app()
    with serve_asgi(app) as base:
        reader = OpenAIVisionReader(base + "/v1", FAKE_OPENAI_KEY, "gpt-4o-mini", timeout=10)
        text = reader.read(media.picture(small_picture("JPEG", (77, 33))))
    assert text == "picture 77x33 JPEG sent as image/jpeg"
    assert app.state.models == ["gpt-4o-mini"]


def test_openai_wrong_key_and_server_error_never_echo_the_key():
    app = openai_app()
    wrong = "sk-wrong-key-abcdefghijklmnop"
    with serve_asgi(app) as base:
        with pytest.raises(ProviderError) as refused:
            OpenAITranscriber(base + "/v1", wrong, "whisper-1", timeout=10).transcribe(PCM)
        app.state.fail_every = 1
        with pytest.raises(ProviderError) as failed:
            OpenAIVisionReader(base + "/v1", FAKE_OPENAI_KEY, "m", timeout=10).read(media.picture(small_picture()))
    assert "HTTP 401" in str(refused.value) and wrong not in str(refused.value)
    assert "HTTP 500" in str(failed.value) and FAKE_OPENAI_KEY not in str(failed.value)


def test_pcm_to_wav_is_a_valid_16k_mono_header():
    import io
    import wave

    with wave.open(io.BytesIO(pcm_to_wav(PCM))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes()) == (
            16000,
            1,
            2,
            len(PCM) // 2,
        )
