"""POST /PictureToTextModel/chat end to end: real OCR of rendered text, the online engines
over local servers, one picTime per success through reserve and settle, release on failure."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.server import create_app
from db.models import QuotaLedger
from tests.factories import make_settings, make_user, user_headers
from tests.media.helpers import assert_books_balance, snapshot, usage_rows
from tests.media.samples import CHINESE_LINES, ENGLISH_LINES, character_accuracy, render_lines, small_picture

URL = "/PictureToTextModel/chat"


def ledger_kinds(maker, user_id: str) -> list[tuple[str, int]]:
    with maker() as s:
        rows = s.execute(
            select(QuotaLedger.kind, QuotaLedger.delta_pic_times)
            .where(QuotaLedger.user_id == user_id)
            .order_by(QuotaLedger.id)
        ).all()
    return [(kind, delta) for kind, delta in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "language, lines, name, mime",
    [("English", ENGLISH_LINES, "lines.png", "image/png"), ("Chinese", CHINESE_LINES, "lines.jpg", "image/jpeg")],
)
def test_rendered_text_is_read_by_the_embedded_engine_for_one_pic_time(
    client, maker, settings, language, lines, name, mime
):
    user = make_user(maker, settings, pic_times=3)
    data = render_lines(lines, fmt="PNG" if name.endswith("png") else "JPEG")
    r = client.post(URL, files={"file": (name, data, mime)}, headers=user_headers(client, user.username))
    assert r.status_code == 200, r.text
    body = r.json()
    accuracy = character_accuracy("".join(lines), body["content"])
    print(f"\n{language} through the endpoint: {body['content']!r}  character accuracy={accuracy:.3f}")
    assert body["code"] == 0 and body["msg"] == "请求成功" and body["model"] == "embedded" and accuracy >= 0.9
    assert snapshot(maker, user.id).pic_times == 2
    assert ledger_kinds(maker, user.id) == [("grant", 3), ("reserve", -1), ("settle", 0)]
    (row,) = usage_rows(maker, user.id)
    assert (row.kind, row.status, row.model, row.provider, row.audio_seconds) == (
        "picture",
        "ok",
        "embedded",
        "rapidocr",
        None,
    )
    assert_books_balance(maker, user.id)


def test_iflytek_ocr_reads_the_picture_for_one_pic_time(client, maker, settings, connections):
    user = make_user(maker, settings, pic_times=2)
    r = client.post(
        URL,
        params={"model": "xf-ocr"},
        files={"file": ("scan.bmp", small_picture("BMP", (321, 123)), "image/bmp")},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "321x123 BMP" and r.json()["model"] == "xf-ocr"
    assert connections["ocr"].state.calls == 1 and connections["ocr"].state.refused == 0
    assert snapshot(maker, user.id).pic_times == 1
    (row,) = usage_rows(maker, user.id)
    assert (row.model, row.provider, row.status) == ("xf-ocr", "iflytek-ocr", "ok")
    assert_books_balance(maker, user.id)


def test_openai_vision_reads_a_webp_picked_by_form_field(client, maker, settings, connections):
    user = make_user(maker, settings, pic_times=1)
    r = client.post(
        URL,
        data={"model": "oa-vision"},
        files={"file": ("photo.webp", small_picture("WEBP", (50, 40)), "image/webp")},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "picture 50x40 WEBP sent as image/webp"
    assert connections["openai"].state.models == ["oa-vision"]  # no ai_version: the connection's name
    assert snapshot(maker, user.id).pic_times == 0
    assert_books_balance(maker, user.id)


def test_a_picture_sent_as_the_raw_body_with_an_image_type(client, maker, settings, connections):
    user = make_user(maker, settings, pic_times=1)
    headers = {**user_headers(client, user.username), "Content-Type": "image/png"}
    r = client.post(URL, params={"model": "oa-vision"}, content=small_picture("PNG", (20, 10)), headers=headers)
    assert r.status_code == 200 and r.json()["content"] == "picture 20x10 PNG sent as image/png"


def test_engine_failure_releases_the_pic_time(client, maker, settings, connections):
    user = make_user(maker, settings, pic_times=2)
    connections["openai"].state.fail_every = 1
    r = client.post(
        URL,
        params={"model": "oa-vision"},
        files={"file": ("a.png", small_picture())},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 502 and r.json()["code"] == "PICTURE_TO_TEXT_ERROR" and "HTTP 500" in r.json()["msg"]
    assert snapshot(maker, user.id).pic_times == 2
    assert ledger_kinds(maker, user.id) == [("grant", 2), ("reserve", -1), ("release", 1)]
    (row,) = usage_rows(maker, user.id)
    assert row.status == "error" and "HTTP 500" in row.error
    assert_books_balance(maker, user.id)


def test_no_pic_times_left_is_refused_before_any_engine_runs(client, maker, settings, connections):
    user = make_user(maker, settings, pic_times=0, tokens=1000)
    before = snapshot(maker, user.id)
    for model in ("oa-vision", "xf-ocr", "embedded"):
        r = client.post(
            URL,
            params={"model": model},
            files={"file": ("a.png", small_picture())},
            headers=user_headers(client, user.username),
        )
        assert (r.status_code, r.json()["code"]) == (402, "PIC_TIMES_NOT_ENOUGH"), r.text
    assert connections["openai"].state.calls == 0 and connections["ocr"].state.calls == 0
    assert snapshot(maker, user.id) == before


def test_default_picture_engine_comes_from_settings(db_url, tmp_path, maker, connections):
    settings = make_settings(db_url, tmp_path, default_picture_engine="xf-ocr")
    with TestClient(create_app(settings, playground=False)) as client:
        user = make_user(maker, settings, pic_times=1)
        r = client.post(
            URL, files={"file": ("a.jpeg", small_picture("JPEG", (9, 8)))}, headers=user_headers(client, user.username)
        )
    assert r.status_code == 200 and r.json()["content"] == "9x8 JPEG" and r.json()["model"] == "xf-ocr"


def test_legacy_uuid_and_username_headers_only_when_switched_on(db_url, tmp_path, client, maker, connections):
    user = make_user(maker, settings=make_settings(db_url, tmp_path), pic_times=2)
    legacy = {"uuid": user.id, "username": user.username}
    files = {"file": ("a.png", small_picture())}
    r = client.post(URL, params={"model": "oa-vision"}, files=files, headers=legacy)
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    on = make_settings(db_url, tmp_path, legacy_uuid_auth=True)
    with TestClient(create_app(on, playground=False)) as legacy_client:
        r = legacy_client.post(URL, params={"model": "oa-vision"}, files=files, headers=legacy)
    assert r.status_code == 200 and r.json()["code"] == 0
    assert snapshot(maker, user.id).pic_times == 1


def test_picture_needs_a_signed_in_user(client, maker, settings):
    user = make_user(maker, settings, pic_times=1)
    before = snapshot(maker, user.id)
    r = client.post(URL, files={"file": ("a.png", small_picture())})
    assert r.status_code == 401 and r.json()["code"] == "PERMISSION_NOT_ALLOW"
    assert snapshot(maker, user.id) == before


def test_a_plain_openai_connection_serves_pictures_and_voice(client, maker, settings, openai_server):
    from tests.media.fakes import FAKE_OPENAI_KEY
    from tests.media.helpers import add_connection

    url, app = openai_server
    add_connection(maker, settings, name="gpt", protocol="openai", url=url, secret=FAKE_OPENAI_KEY, version="gpt-4o")
    user = make_user(maker, settings, pic_times=1)
    headers = user_headers(client, user.username)
    r = client.post(
        URL, params={"model": "gpt"}, files={"file": ("a.png", small_picture("PNG", (5, 6)))}, headers=headers
    )
    assert r.status_code == 200 and r.json()["content"] == "picture 5x6 PNG sent as image/png"
    r = client.post(
        "/voiceModel/chat", params={"model": "gpt"}, files={"file": ("a.pcm", b"\x00\x00" * 10)}, headers=headers
    )
    assert r.status_code == 200 and r.json()["content"].startswith("heard 10 samples")
    assert app.state.models == ["gpt-4o", "gpt-4o"]
