"""The Blocks wiring: one concurrency group for every model call, Stop outside it, labels."""

from __future__ import annotations

import pytest

from backend.playground import app as playground_app
from backend.playground.labels import LABELS, label
from tests.factories import make_settings

MODEL_HANDLERS = {"on_chat", "on_transcribe", "on_recognise"}


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    settings = make_settings("sqlite://", tmp_path_factory.mktemp("blocks"), model_concurrency=3)
    return playground_app.build_blocks(settings, maker=None)  # building touches no database


def _handlers(blocks) -> list:
    return [f for f in blocks.fns.values() if getattr(f.fn, "__name__", None)]


def test_every_model_call_shares_one_concurrency_group_sized_by_settings(blocks):
    model_calls = [f for f in _handlers(blocks) if f.fn.__name__ in MODEL_HANDLERS]
    # chat from the textbox, chat after "send to chat" (voice and picture), transcribe, recognise
    assert sorted(f.fn.__name__ for f in model_calls) == ["on_chat"] * 3 + ["on_recognise", "on_transcribe"]
    assert {f.concurrency_id for f in model_calls} == {playground_app.MODEL_GROUP}
    assert {f.concurrency_limit for f in model_calls} == {3}
    others = [f for f in _handlers(blocks) if f.fn.__name__ not in MODEL_HANDLERS]
    assert others and all(f.concurrency_id != playground_app.MODEL_GROUP for f in others)
    stop = next(f for f in others if f.fn.__name__ == "on_stop")
    assert stop.concurrency_limit is None  # never queued behind the chat it stops


def test_the_voice_input_records_or_uploads_and_chat_takes_attachments(blocks):
    by_elem = {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}
    assert by_elem["pg-audio"].sources == ["microphone", "upload"]
    assert set(by_elem["pg-input"].file_types) == {"image", "audio"}


def test_every_label_exists_in_both_languages():
    for key, (zh, en) in LABELS.items():
        assert zh and en and zh != en or key in {"balance"}, key
        assert label(key, "en") == en and label(key, "zh-CN") == zh and label(key, None) == zh
    assert label("who.user", "en-GB", name="ann") == "Signed in as ann"
