"""`record_exchange`, the hook the chat endpoints call to write history, and `make_title`."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.chat.conversations import TITLE_MAX, first_words, make_title, record_exchange
from backend.errors import ServiceError
from db.models import ModelConversation, ModelMessage
from tests.factories import make_user
from tests.seed003.helpers import count


def short_title(user_text: str, reply_text: str) -> str:
    """A title writer as the gateway supplies it: a plain function of the first exchange."""
    return f"About {user_text.split()[0]}"


def failing_writer(user_text: str, reply_text: str) -> str:
    raise TimeoutError("the model did not answer")


def test_new_conversation_gets_messages_tokens_and_a_written_title(maker, settings):
    user = make_user(maker, settings)
    with maker.begin() as s:
        cid = record_exchange(
            s,
            user_id=user.id,
            conversation_id=None,
            model_name="SmolLM2",
            user_text="sorting algorithms compared",
            reply_text="Bubble sort is O(n^2)...",
            prompt_tokens=12,
            completion_tokens=34,
            title_writer=short_title,
        )
    with maker() as s:
        conv = s.get(ModelConversation, cid)
        assert (conv.user_id, conv.ai_name, conv.title) == (user.id, "SmolLM2", "About sorting")
        rows = s.scalars(select(ModelMessage).where(ModelMessage.conversation_id == cid).order_by(ModelMessage.id))
        assert [(m.role, m.content, m.prompt_tokens, m.completion_tokens) for m in rows] == [
            ("user", "sorting algorithms compared", 12, None),
            ("assistant", "Bubble sort is O(n^2)...", None, 34),
        ]


def test_follow_up_appends_and_keeps_the_title(maker, settings):
    user = make_user(maker, settings)
    with maker.begin() as s:
        cid = record_exchange(
            s,
            user_id=user.id,
            conversation_id=None,
            model_name="m",
            user_text="first question",
            reply_text="first answer",
            prompt_tokens=1,
            completion_tokens=2,
        )
    with maker.begin() as s:
        again = record_exchange(
            s,
            user_id=user.id,
            conversation_id=cid,
            model_name="m",
            user_text="second question",
            reply_text="second answer",
            prompt_tokens=3,
            completion_tokens=4,
            title_writer=short_title,  # not called: the conversation already has a title
        )
    assert again == cid
    with maker() as s:
        assert s.get(ModelConversation, cid).title == "first question"
        contents = s.scalars(
            select(ModelMessage.content).where(ModelMessage.conversation_id == cid).order_by(ModelMessage.id)
        ).all()
    assert contents == ["first question", "first answer", "second question", "second answer"]
    assert count(maker, ModelConversation) == 1


def test_another_users_conversation_is_404_and_writes_nothing(maker, settings):
    alice, bob = make_user(maker, settings), make_user(maker, settings)
    with maker.begin() as s:
        cid = record_exchange(
            s,
            user_id=alice.id,
            conversation_id=None,
            model_name="m",
            user_text="hi",
            reply_text="hello",
            prompt_tokens=1,
            completion_tokens=1,
        )
    for target in (cid, cid + 10_000):
        with maker() as s, pytest.raises(ServiceError) as info:
            record_exchange(
                s,
                user_id=bob.id,
                conversation_id=target,
                model_name="m",
                user_text="sneaky",
                reply_text="x",
                prompt_tokens=1,
                completion_tokens=1,
            )
        assert info.value.status == 404
    assert count(maker, ModelMessage) == 2


def test_failing_or_empty_title_writer_falls_back_to_first_words(maker, settings):
    user = make_user(maker, settings)
    text = "Please explain how the quota reservation works when the model stream is cut off halfway"
    for writer in (failing_writer, lambda u, r: None, lambda u, r: "   "):
        with maker.begin() as s:
            cid = record_exchange(
                s,
                user_id=user.id,
                conversation_id=None,
                model_name="m",
                user_text=text,
                reply_text="...",
                prompt_tokens=1,
                completion_tokens=1,
                title_writer=writer,
            )
        with maker() as s:
            title = s.get(ModelConversation, cid).title
        assert title == "Please explain how the quota reservation works"
        assert len(title) <= TITLE_MAX


def test_a_long_model_name_fits_the_column(maker, settings):
    user = make_user(maker, settings)
    with maker.begin() as s:
        cid = record_exchange(
            s,
            user_id=user.id,
            conversation_id=None,
            model_name="q" * 80,
            user_text="hi",
            reply_text="hello",
            prompt_tokens=1,
            completion_tokens=1,
        )
    with maker() as s:
        assert s.get(ModelConversation, cid).ai_name == "q" * 50


# --- make_title without a database ---------------------------------------------------------


def test_make_title_trims_what_the_model_writes():
    assert make_title("q", "a", lambda u, r: '"Quick sort in Java"\n') == "Quick sort in Java"
    assert make_title("q", "a", lambda u, r: "Title: Cats") == "Cats"
    long = make_title("q", "a", lambda u, r: "word " * 30)
    assert len(long) <= TITLE_MAX and not long.endswith(" ")


def test_make_title_first_words():
    assert make_title("生成一个冒泡排序") == "生成一个冒泡排序"
    cjk = "请" * 80
    assert make_title(cjk) == "请" * 50  # no spaces: a hard cut at 50
    assert make_title("  several\n\nlines   of\ttext ") == "several lines of text"
    assert make_title("", "") == "New conversation"
    assert first_words("a" * 60 + " tail") == "a" * 50
