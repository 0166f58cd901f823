"""New conversations get a title written by their model, in the background; the first
words stay when the model fails or the user renamed the conversation meanwhile."""

import asyncio
import time

import pytest
from sqlalchemy import select

from backend.chat import gateway
from backend.errors import ServiceError
from db.models import ModelConversation, UsageRecord
from tests.factories import make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model

pytestmark = pytest.mark.committed  # the title is written by a background task

USER_TEXT = "tell me everything about quantum cats and their boxes please"


def titles(maker) -> list[str]:
    with maker() as s:
        return list(s.scalars(select(ModelConversation.title)))


def test_chat_gets_a_model_written_title(client, app, maker, settings):
    app.state.settings = settings.model_copy(update={"model_titles": True})
    user = make_user(maker, settings, tokens=5000)
    with OpenAIServer("Quantum Cats Explained") as upstream:
        add_online_model(maker, settings, url=upstream.url, name="fake", examples=[])
        r = client.post(
            "/textModel/chat",
            json={"dialog": [{"role": "user", "content": USER_TEXT}], "model": "fake"},
            headers=user_headers(client, user.username),
        )
        assert r.json()["code"] == 0
        deadline = time.monotonic() + 30
        while titles(maker) != ["Quantum Cats Explained"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert titles(maker) == ["Quantum Cats Explained"]
        assert len(upstream.requests) == 2  # the answer, then the title
        title_request = upstream.requests[-1]["json"]["messages"][-1]["content"]
        assert "title" in title_request.lower() and "quantum cats" in title_request
    with maker() as s:
        system_rows = s.scalars(select(UsageRecord).where(UsageRecord.admin_name == "system:titles")).all()
        assert len(system_rows) == 1 and system_rows[0].user_id is None


def test_failed_title_keeps_first_words(maker, settings, client):
    user = make_user(maker, settings, tokens=5000)
    with OpenAIServer("answer") as good:
        add_online_model(maker, settings, url=good.url, name="good", examples=[])
        r = client.post(
            "/textModel/chat",
            json={"dialog": [{"role": "user", "content": USER_TEXT}], "model": "good"},
            headers=user_headers(client, user.username),
        )
        conversation_id = r.json()["conversation_id"]
    with OpenAIServer("never", fail_status=500) as bad:
        add_online_model(maker, settings, url=bad.url, name="bad", examples=[])
        with pytest.raises(ServiceError):
            asyncio.run(
                gateway.write_title(
                    maker,
                    settings,
                    model_name="bad",
                    conversation_id=conversation_id,
                    user_text=USER_TEXT,
                    reply="answer",
                )
            )
    assert all(t.startswith("tell me everything about quantum") for t in titles(maker))


def test_renamed_conversation_is_not_overwritten(maker, settings, client):
    user = make_user(maker, settings, tokens=5000)
    with OpenAIServer("Model Title") as upstream:
        add_online_model(maker, settings, url=upstream.url, name="fake", examples=[])
        r = client.post(
            "/textModel/chat",
            json={"dialog": [{"role": "user", "content": "hello there"}], "model": "fake"},
            headers=user_headers(client, user.username),
        )
        conversation_id = r.json()["conversation_id"]
        with maker.begin() as s:
            s.get(ModelConversation, conversation_id).title = "My own name"
        asyncio.run(
            gateway.write_title(
                maker,
                settings,
                model_name="fake",
                conversation_id=conversation_id,
                user_text="hello there",
                reply="answer",
            )
        )
    with maker() as s:
        assert s.get(ModelConversation, conversation_id).title == "My own name"
