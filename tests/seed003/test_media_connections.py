"""Voice and picture engines are online connections too: every protocol media.py serves
can be created through /model/ol/manage, with its secret encrypted and masked."""

import pytest
from sqlalchemy import select

from backend import security
from backend.catalog.connections import api_base
from db.models import ModelAiOnline

SECRET = "app123:key4567890abcdef:secret0987654321"


@pytest.mark.parametrize(
    "protocol,url",
    [
        ("iflytek-iat", "wss://ws-api.xfyun.cn/v2/iat"),
        ("iflytek-ocr", "https://api.xf-yun.com/v1/private/hh_ocr_recognize_doc"),
        ("openai-audio", "https://api.example.com/v1/audio/transcriptions"),
        ("openai-vision", "https://api.example.com/v1"),
        ("spark", "wss://spark-api.xf-yun.com/v3.5/chat"),
    ],
)
def test_media_protocols_can_be_created(client, maker, settings, admin, protocol, url):
    body = {"aiName": f"engine-{protocol}", "aiApi": url, "aiToken": SECRET, "protocol": protocol, "aiType": 3}
    r = client.post("/model/ol/manage", json=body, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert SECRET not in r.text and r.json()["data"]["aiToken"].endswith(SECRET[-4:])
    with maker() as s:
        row = s.scalar(select(ModelAiOnline).where(ModelAiOnline.ai_name == f"engine-{protocol}"))
        assert row.protocol == protocol and security.decrypt_secret(settings, row.ai_token_encrypted) == SECRET


def test_unknown_protocol_is_refused(client, admin):
    body = {"aiName": "x", "aiApi": "https://api.example.com/v1", "protocol": "carrier-pigeon"}
    r = client.post("/model/ol/manage", json=body, headers=admin.headers)
    assert r.status_code == 400 and "protocol must be one of" in r.json()["message"]


def test_transcription_endpoint_is_reduced_to_its_base():
    assert api_base("https://h.example/v1/audio/transcriptions", "openai-audio") == "https://h.example/v1"
