"""Voice and pictures in the playground: the media service's real engines, picTimes charged,
admins refused, and the recognised text carried into a chat message."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from backend.accounts.identity import Principal
from backend.billing import quota
from backend.errors import ServiceError
from backend.playground import session as playground
from db.models import UsageRecord
from tests.factories import make_admin, make_user
from tests.media.samples import ENGLISH_LINES, SENTENCE, character_accuracy, espeak_wav, render_lines, word_error_rate

pytestmark = pytest.mark.slow


def _account(maker, kind: str, account_id: str) -> Principal:
    with maker() as s:
        return playground.account_for(s, f"{kind}:{account_id}")


def test_a_recorded_clip_is_transcribed_for_free(maker, settings, tmp_path):
    user = make_user(maker, settings, tokens=10)
    clip = tmp_path / "recording.wav"  # what gr.Audio(type="filepath", format="wav") hands over
    clip.write_bytes(espeak_wav())
    found = asyncio.run(
        playground.transcribe(maker, settings, account=_account(maker, "user", user.id), audio_path=str(clip))
    )
    assert word_error_rate(SENTENCE, found.content) <= 0.25
    assert found.audio_seconds and found.audio_seconds > 1
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 10  # voice costs nothing unless Settings.voice_costs_quota
        row = s.scalars(select(UsageRecord)).one()
        assert (row.kind, row.status, row.user_id) == ("voice", "ok", user.id)


def test_a_picture_is_read_for_one_pic_time_and_refused_without_one(maker, settings, tmp_path):
    user = make_user(maker, settings, pic_times=1)
    account = _account(maker, "user", user.id)
    picture = tmp_path / "upload.png"
    picture.write_bytes(render_lines(ENGLISH_LINES))

    found = asyncio.run(playground.recognise_picture(maker, settings, account=account, image_path=str(picture)))
    assert character_accuracy("\n".join(ENGLISH_LINES), found.content) >= 0.9
    with pytest.raises(ServiceError) as refused:
        asyncio.run(playground.recognise_picture(maker, settings, account=account, image_path=str(picture)))
    assert (refused.value.code, refused.value.status) == ("PIC_TIMES_NOT_ENOUGH", 402)
    with maker() as s:
        assert quota.balance(s, user.id) == quota.ledger_sum(s, user.id) == quota.Balance(0, 0)
        assert [r.status for r in s.scalars(select(UsageRecord))] == ["ok"]  # the refusal ran no engine


def test_attachments_turn_into_text_for_the_chat_and_bad_files_are_clear_errors(maker, settings, tmp_path):
    user = make_user(maker, settings, pic_times=1)
    account = _account(maker, "user", user.id)
    picture = tmp_path / "note.png"
    picture.write_bytes(render_lines(ENGLISH_LINES[:1]))
    text = asyncio.run(
        playground.attachments_text(
            maker, settings, account=account, files=[str(picture)], describe=lambda kind, found: f"<{kind}:{found}>"
        )
    )
    assert text.startswith("<picture:") and "Meteor" in text
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not a picture")
    with pytest.raises(ServiceError) as bad:
        asyncio.run(playground.recognise_picture(maker, settings, account=account, image_path=str(fake)))
    assert bad.value.status == 400
    with pytest.raises(ServiceError) as missing:
        asyncio.run(playground.transcribe(maker, settings, account=account, audio_path=None))
    assert missing.value.code == "GET_FILE_FAIL"


def test_admins_are_refused_voice_and_pictures(maker, settings, tmp_path):
    admin = make_admin(maker, settings)
    account = _account(maker, "admin", str(admin.id))
    picture = tmp_path / "upload.png"
    picture.write_bytes(render_lines(ENGLISH_LINES[:1]))
    for call in (
        playground.recognise_picture(maker, settings, account=account, image_path=str(picture)),
        playground.transcribe(maker, settings, account=account, audio_path=str(picture)),
    ):
        with pytest.raises(ServiceError) as refused:
            asyncio.run(call)
        assert refused.value.status == 403
    with maker() as s:
        assert s.scalars(select(UsageRecord)).first() is None
