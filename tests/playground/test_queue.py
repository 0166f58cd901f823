"""The playground through Gradio's own protocol on a live server, as the browser drives it:
the page's load event, then a chat streamed over the queue, signed in by the session cookie."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from backend.playground import session as playground
from backend.playground.gate import COOKIE_NAME
from db.models import UsageRecord
from tests.factories import make_admin, make_user
from tests.gateway.helpers import assert_ledger_consistent
from tests.playground.helpers import GradioSession, add_embedded_model, completed_output

pytestmark = pytest.mark.slow


def _session(base: str, settings, maker, kind: str, account_id: str, **params) -> GradioSession:
    with maker() as s:
        account = playground.account_for(s, f"{kind}:{account_id}")
    client = httpx.Client(
        base_url=f"{base}/playground",
        cookies={COOKIE_NAME: playground.session_token(settings, account)},
        params=params,
        timeout=httpx.Timeout(120, connect=10),
    )
    session = GradioSession(client)
    session.load_config()
    return session


def test_a_chat_streams_over_the_queue_and_shows_tokens_and_balance(pg_server, maker, settings):
    base, _app = pg_server
    add_embedded_model(maker, name="SmolLM2", num_predict=12, is_default=True)
    user = make_user(maker, settings, tokens=2000, pic_times=2)
    tab = _session(base, settings, maker, "user", user.id, lang="en")

    loaded = completed_output(tab.run(0, []))["data"]
    assert loaded[0] is None  # the language lives in session state
    assert "Meteor playground" in loaded[1]
    assert f"Signed in as {user.username}" in loaded[2] and "2000 tokens, 2 picTimes" in loaded[2]
    assert loaded[3]["choices"] == [["SmolLM2", "SmolLM2"]] and loaded[3]["value"] == "SmolLM2"

    submit = tab.fn_index("pg-input", "submit")
    messages = tab.run(submit, [{"text": "Hello there!", "files": []}, [], "SmolLM2", None, "en"])
    appended = [
        op
        for m in messages
        if m.get("msg") == "process_generating"
        for op in (m["output"]["data"][0] or [])
        if isinstance(op, list) and op[0] == "append"
    ]
    assert len(appended) >= 2, "the answer streams in pieces"
    history, _box, _conv, status, who = completed_output(messages)["data"]
    answer = history[1]["content"][0]["text"]
    assert history[0]["content"][0]["text"] == "Hello there!" and answer
    assert answer == "".join(op[2] for op in appended)
    with maker() as s:
        row = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).one()
    left = assert_ledger_consistent(maker, user.id)
    assert row.status == "ok" and left == 2000 - row.prompt_tokens - row.completion_tokens
    assert f"{row.prompt_tokens} prompt + {row.completion_tokens} completion tokens" in status
    assert f"Balance: {left} tokens, 2 picTimes" in status and f"{left} tokens" in who


def test_the_page_speaks_chinese_by_default_and_refuses_admin_voice(pg_server, maker, settings):
    base, _app = pg_server
    add_embedded_model(maker, name="SmolLM2", is_default=True)
    admin = make_admin(maker, settings)
    tab = _session(base, settings, maker, "admin", str(admin.id))

    loaded = completed_output(tab.run(0, []))["data"]
    assert "流星体验场" in loaded[1] and "管理员测试" in loaded[2]
    transcribe = tab.fn_index("pg-transcribe", "click")
    _text, status = completed_output(tab.run(transcribe, [None, "zh-CN"]))["data"]
    assert "出错了" in status and "sign in to the dashboard as a user" in status
    with maker() as s:
        assert s.scalars(select(UsageRecord)).first() is None
