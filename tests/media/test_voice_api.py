"""POST /voiceModel/chat end to end: real speech through the embedded engine, the online
engines over local servers, usage records, optional quota charging, authentication."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from backend.server import create_app
from tests.factories import make_settings, make_user, user_headers
from tests.media.helpers import add_connection, assert_books_balance, snapshot, usage_rows
from tests.media.samples import (
    CHINESE_SPEECH,
    SENTENCE,
    character_error_rate,
    espeak_wav,
    mandarin_pcm,
    speech_pcm,
    speech_wav_stereo_44k,
    word_error_rate,
)

URL = "/voiceModel/chat"


def _send(client: TestClient, how: str, headers: dict, **params):
    if how == "multipart pcm":
        return client.post(
            URL,
            files={"file": ("speech.pcm", speech_pcm(), "application/octet-stream")},
            headers=headers,
            params=params,
        )
    if how == "raw pcm body":
        return client.post(
            URL, content=speech_pcm(), headers={**headers, "Content-Type": "application/octet-stream"}, params=params
        )
    if how == "multipart wav 44.1k stereo":
        return client.post(
            URL, files={"file": ("speech.wav", speech_wav_stereo_44k(), "audio/wav")}, headers=headers, params=params
        )
    if how == "raw wav body 22.05k":
        return client.post(URL, content=espeak_wav(), headers={**headers, "Content-Type": "audio/wav"}, params=params)
    raise AssertionError(how)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["multipart pcm", "raw pcm body", "multipart wav 44.1k stereo", "raw wav body 22.05k"])
def test_espeak_speech_is_transcribed_by_the_embedded_engine(client, maker, settings, how):
    user = make_user(maker, settings, tokens=50, pic_times=2)
    before = snapshot(maker, user.id)
    r = _send(client, how, user_headers(client, user.username))
    assert r.status_code == 200, r.text
    body = r.json()
    wer = word_error_rate(SENTENCE, body["content"])
    print(f"\n{how}: {body['content']!r}  WER={wer:.3f}")
    assert body["code"] == 0 and body["model"] == "embedded" and wer <= 0.25
    seconds = len(speech_pcm()) / 32000
    assert body["seconds"] == pytest.approx(seconds, abs=0.05)
    (row,) = usage_rows(maker, user.id)
    assert (row.kind, row.status, row.model, row.provider) == ("voice", "ok", "embedded", "whisper")
    assert row.audio_seconds == pytest.approx(seconds, abs=0.05) and row.latency_ms >= 0 and row.academy == "CS"
    after = snapshot(maker, user.id)
    # voice is free by default: the balance and ledger are untouched, one usage row more
    assert (after.tokens, after.pic_times, after.ledger_rows) == (before.tokens, before.pic_times, before.ledger_rows)
    assert after.usage_rows == before.usage_rows + 1


@pytest.mark.slow
def test_mandarin_is_transcribed_detected_or_asked_for(client, maker, settings):
    """The desktop client sends no language: the engine detects Chinese. `language` (query
    or form field) asks for one; the answer says which was used."""
    user = make_user(maker, settings)
    headers = user_headers(client, user.username)
    hanzi, pinyin = CHINESE_SPEECH[0]
    clip = {"file": ("speech.pcm", mandarin_pcm(pinyin), "application/octet-stream")}
    detected = client.post(URL, files=clip, headers=headers).json()
    asked = client.post(URL, files=clip, data={"language": "zh"}, headers=headers).json()
    english = client.post(URL, files={"file": ("s.pcm", speech_pcm())}, params={"language": "en"}, headers=headers)
    assert (detected["code"], detected["language"], asked["language"]) == (0, "zh", "zh")
    assert character_error_rate([(hanzi, detected["content"]), (hanzi, asked["content"])]) <= 0.75
    assert english.json()["language"] == "en" and word_error_rate(SENTENCE, english.json()["content"]) <= 0.25
    assert len(usage_rows(maker, user.id)) == 3


def test_an_unknown_language_is_refused_before_any_engine_runs(client, maker, settings):
    user = make_user(maker, settings)
    r = client.post(
        URL,
        files={"file": ("a.pcm", b"\x00\x00")},
        params={"language": "fr"},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 422 and r.json()["code"] == "MODEL_ERROR" and "fr" in r.json()["msg"]
    assert usage_rows(maker, user.id) == []


def test_iflytek_iat_is_picked_by_the_model_parameter(client, maker, settings, connections):
    user = make_user(maker, settings)
    pcm = bytes(range(256)) * 40
    r = client.post(
        URL, params={"model": "xf-iat"}, files={"file": ("a.pcm", pcm)}, headers=user_headers(client, user.username)
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "你好，世界" and r.json()["model"] == "xf-iat"
    (session,) = connections["iat"].sessions
    assert bytes(session["audio"]) == pcm and connections["iat"].refused == 0
    (row,) = usage_rows(maker, user.id)
    assert (row.model, row.provider, row.status) == ("xf-iat", "iflytek-iat", "ok")
    assert row.audio_seconds == pytest.approx(len(pcm) / 32000, abs=0.001)


def test_openai_transcription_is_picked_by_a_form_field(client, maker, settings, connections):
    user = make_user(maker, settings)
    pcm = b"\x01\x00" * 16000
    r = client.post(
        URL, data={"model": "oa-audio"}, files={"file": ("a.pcm", pcm)}, headers=user_headers(client, user.username)
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "heard 16000 samples at 16000 Hz mono 16-bit"
    assert connections["openai"].state.models == ["whisper-1"]  # the connection's ai_version
    (row,) = usage_rows(maker, user.id)
    assert (row.model, row.provider, row.audio_seconds) == ("oa-audio", "openai-audio", 1.0)


def test_default_voice_engine_comes_from_settings(db_url, tmp_path, maker, connections):
    settings = make_settings(db_url, tmp_path, default_voice_engine="oa-audio")
    with TestClient(create_app(settings, playground=False)) as client:
        user = make_user(maker, settings)
        r = client.post(URL, files={"file": ("a.pcm", b"\x00\x00" * 800)}, headers=user_headers(client, user.username))
    assert r.status_code == 200 and r.json()["model"] == "oa-audio"
    assert r.json()["content"].startswith("heard 800 samples")


def test_unknown_engine_and_wrong_kind_of_connection_change_nothing(client, maker, settings, connections):
    user = make_user(maker, settings)
    headers = user_headers(client, user.username)
    before = snapshot(maker, user.id)
    r = client.post(URL, params={"model": "nope"}, files={"file": ("a.pcm", b"\x00\x00")}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (404, "MODEL_ERROR") and "nope" in r.json()["msg"]
    r = client.post(URL, params={"model": "xf-ocr"}, files={"file": ("a.pcm", b"\x00\x00")}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (400, "MODEL_ERROR") and "iflytek-ocr" in r.json()["msg"]
    assert connections["openai"].state.calls == 0 and connections["iat"].sessions == []
    assert snapshot(maker, user.id) == before


def test_engine_failure_is_audio_to_text_error_and_recorded_without_secrets(client, maker, settings, iat_server):
    secret = "5f1a2b3c:" + "a" * 32 + ":" + "WRONG-secret-" + "z" * 20
    add_connection(maker, settings, name="xf-bad", protocol="iflytek-iat", url=iat_server.url, secret=secret)
    user = make_user(maker, settings)
    r = client.post(
        URL,
        params={"model": "xf-bad"},
        files={"file": ("a.pcm", b"\x00\x00" * 100)},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 502 and r.json()["code"] == "AUDIO_TO_TEXT_ERROR"
    assert "HTTP 401" in r.json()["msg"] and "WRONG-secret" not in r.text and "a" * 32 not in r.text
    (row,) = usage_rows(maker, user.id)
    assert row.status == "error" and "HTTP 401" in row.error and "WRONG-secret" not in row.error
    assert iat_server.refused == 1


def test_voice_charges_tokens_by_duration_when_configured(db_url, tmp_path, maker, connections):
    settings = make_settings(db_url, tmp_path, voice_costs_quota=True, voice_tokens_per_second=3)
    pcm = b"\x00\x00" * 40000  # 2.5 s
    with TestClient(create_app(settings, playground=False)) as client:
        rich = make_user(maker, settings, tokens=100)
        r = client.post(
            URL,
            params={"model": "oa-audio"},
            files={"file": ("a.pcm", pcm)},
            headers=user_headers(client, rich.username),
        )
        assert r.status_code == 200, r.text
        after = snapshot(maker, rich.id)
        assert after.tokens == 100 - math.ceil(2.5 * 3)
        assert_books_balance(maker, rich.id)

        connections["openai"].state.fail_every = 1  # the engine fails: everything is given back
        r = client.post(
            URL,
            params={"model": "oa-audio"},
            files={"file": ("a.pcm", pcm)},
            headers=user_headers(client, rich.username),
        )
        assert r.status_code == 502 and r.json()["code"] == "AUDIO_TO_TEXT_ERROR"
        assert snapshot(maker, rich.id).tokens == after.tokens
        assert_books_balance(maker, rich.id)

        poor = make_user(maker, settings, tokens=7)
        before = snapshot(maker, poor.id)
        calls = connections["openai"].state.calls
        r = client.post(
            URL,
            params={"model": "oa-audio"},
            files={"file": ("a.pcm", pcm)},
            headers=user_headers(client, poor.username),
        )
        assert (r.status_code, r.json()["code"]) == (402, "TOKEN_NOT_ENOUGH")
        assert connections["openai"].state.calls == calls  # refused before the engine ran
        assert snapshot(maker, poor.id) == before
    kinds = [r.status for r in usage_rows(maker, rich.id)]
    assert kinds == ["ok", "error"]


def test_voice_needs_a_signed_in_user(client, maker, settings):
    user = make_user(maker, settings)
    r = client.post(URL, files={"file": ("a.pcm", b"\x00\x00")})
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    r = client.post(URL, files={"file": ("a.pcm", b"\x00\x00")}, headers={"uuid": user.id, "username": user.username})
    assert r.status_code == 401  # the legacy headers are off by default
    r = client.post(URL, files={"file": ("a.pcm", b"\x00\x00")}, headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    assert usage_rows(maker, user.id) == []


def test_legacy_uuid_headers_work_only_when_switched_on(db_url, tmp_path, maker, connections):
    settings = make_settings(db_url, tmp_path, legacy_uuid_auth=True)
    with TestClient(create_app(settings, playground=False)) as client:
        user = make_user(maker, settings)
        headers = {"uuid": user.id, "username": user.username}
        r = client.post(URL, params={"model": "oa-audio"}, files={"file": ("a.pcm", b"\x00\x00")}, headers=headers)
        assert r.status_code == 200 and r.json()["code"] == 0
        r = client.post(
            URL, files={"file": ("a.pcm", b"\x00\x00")}, headers={"uuid": user.id, "username": "someone-else"}
        )
        assert r.status_code == 200 and r.json()["code"] == "USER_NOT_FOUND"  # as the original answered
