"""A picture is decoded only after its sender was checked, admitted and charged (finding 6).

The proof instruments `media.decode_picture` — the only place that inflates pixels — and
looks at the database from inside it: no call for a user without picTimes or for a
picture over the pixel cap; exactly one call, with the reservation already held, for a
user who pays."""

from __future__ import annotations

import io
from functools import lru_cache

import pytest
from PIL import Image
from sqlalchemy import func, select

from backend.media import recognize as media
from db.models import QuotaReservation
from tests.factories import make_user, user_headers
from tests.media.helpers import assert_books_balance, snapshot, usage_rows

URL = "/PictureToTextModel/chat"


@lru_cache(maxsize=4)
def flat_png(size: tuple[int, int]) -> bytes:
    """A small file that inflates to `size` pixels (one colour compresses to almost nothing)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.fixture
def decodes(monkeypatch, maker):
    """Every call of media.decode_picture, with the caller's active reservations at that moment."""
    calls: list[dict] = []
    real = media.decode_picture

    def instrumented(picture):
        with maker() as s:
            active = s.scalar(
                select(func.count()).select_from(QuotaReservation).where(QuotaReservation.status == "active")
            )
        calls.append({"size": picture.size, "active_reservations": active})
        return real(picture)

    monkeypatch.setattr(media, "decode_picture", instrumented)
    return calls


def test_a_user_without_pic_times_gets_402_and_nothing_is_decoded(client, maker, settings, connections, decodes):
    big = flat_png((4000, 4000))  # 16 MP, under the cap: would take ~110 MB to decode
    assert len(big) < 200_000
    user = make_user(maker, settings, pic_times=0, tokens=1000)
    headers = user_headers(client, user.username)
    before = snapshot(maker, user.id)
    for model in ("embedded", "oa-vision", "xf-ocr"):
        r = client.post(URL, params={"model": model}, files={"file": ("big.png", big)}, headers=headers)
        assert (r.status_code, r.json()["code"]) == (402, "PIC_TIMES_NOT_ENOUGH"), r.text
    assert decodes == []
    assert snapshot(maker, user.id) == before
    assert connections["openai"].state.calls == 0 and connections["ocr"].state.calls == 0


def test_a_picture_over_the_pixel_cap_is_413_before_anything_else(client, maker, settings, connections, decodes):
    bomb = flat_png((6300, 6300))  # the audit's 151 kB picture: 39.7 MP
    for pic_times in (0, 5):
        user = make_user(maker, settings, pic_times=pic_times)
        before = snapshot(maker, user.id)
        r = client.post(URL, files={"file": ("bomb.png", bomb)}, headers=user_headers(client, user.username))
        assert r.status_code == 413, r.text
        body = r.json()
        assert body["code"] == "FILE_FORMAT_ILLEGAL" and "6300×6300" in body["msg"] and "pixels" in body["msg"]
        assert f"{media.MAX_PICTURE_PIXELS:,}" in body["msg"]
        assert snapshot(maker, user.id) == before
    just_over = flat_png((4097, 4096))
    user = make_user(maker, settings, pic_times=1)
    r = client.post(URL, files={"file": ("b.png", just_over)}, headers=user_headers(client, user.username))
    assert r.status_code == 413 and r.json()["code"] == "FILE_FORMAT_ILLEGAL"
    assert decodes == []


def test_a_paying_user_is_charged_first_and_the_picture_decoded_once(client, maker, settings, connections, decodes):
    user = make_user(maker, settings, pic_times=2)
    r = client.post(
        URL,
        params={"model": "oa-vision"},
        files={"file": ("page.png", flat_png((4096, 4096)))},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 200, r.text
    assert decodes == [{"size": (4096, 4096), "active_reservations": 1}]  # reserved before decoding
    assert snapshot(maker, user.id).pic_times == 1
    assert_books_balance(maker, user.id)


def test_a_picture_damaged_inside_its_compressed_data_is_400_and_released(
    client, maker, settings, connections, decodes
):
    # sound chunk structure (CRCs recomputed) but broken zlib data: only decoding can tell
    data = bytearray(flat_png((300, 300)))
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start + 2 : start + length] = b"\xff" * (length - 2)
    import zlib

    crc = zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = crc.to_bytes(4, "big")
    user = make_user(maker, settings, pic_times=1)
    r = client.post(
        URL,
        params={"model": "oa-vision"},
        files={"file": ("d.png", bytes(data))},
        headers=user_headers(client, user.username),
    )
    assert r.status_code == 400 and r.json()["code"] == "FILE_FORMAT_ILLEGAL", r.text
    assert "damaged" in r.json()["msg"]
    assert len(decodes) == 1 and connections["openai"].state.calls == 0
    assert snapshot(maker, user.id).pic_times == 1  # the reservation was given back
    (row,) = usage_rows(maker, user.id)
    assert row.status == "error"
    assert_books_balance(maker, user.id)
