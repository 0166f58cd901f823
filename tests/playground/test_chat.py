"""The playground's chat logic on the real embedded model: streaming through the gateway,
history as a conversation, tokens and balance, Stop, the admin path, refusals."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from backend.accounts.identity import Principal
from backend.playground import session as playground
from db.models import ModelConversation, ModelMessage, QuotaLedger, UsageRecord
from tests.factories import make_admin, make_user
from tests.gateway.helpers import assert_ledger_consistent, balance
from tests.playground.helpers import add_embedded_model

pytestmark = pytest.mark.slow


def _account(maker, kind: str, account_id: str) -> Principal:
    with maker() as s:
        return playground.account_for(s, f"{kind}:{account_id}")


async def _collect(gen) -> list[playground.ChatProgress]:
    return [progress async for progress in gen]


def _chat(maker, settings, account, message, *, model="tiny", history=None, conversation_id=None, key=None):
    return asyncio.run(
        _collect(
            playground.stream_chat(
                maker,
                settings,
                account=account,
                model_name=model,
                message=message,
                history=history,
                conversation_id=conversation_id,
                session_key=key,
            )
        )
    )


def test_a_user_chat_streams_is_charged_and_kept_as_a_conversation(maker, settings):
    add_embedded_model(maker, name="tiny", num_predict=12, is_default=True)
    user = make_user(maker, settings, tokens=1000)
    account = _account(maker, "user", user.id)

    steps = _chat(maker, settings, account, "Say hello to the students.")
    last = steps[-1]
    assert last.done and last.error is None and last.result is not None
    deltas = [s for s in steps if not s.done and s.reply]
    assert len(deltas) >= 2, "the reply arrives in pieces"
    assert all(a.reply == b.reply[: len(a.reply)] for a, b in zip(deltas, deltas[1:], strict=False))
    result = last.result
    assert result.content == last.reply and result.completion_tokens >= 1
    assert result.charged_tokens == result.prompt_tokens + result.completion_tokens
    assert last.balance.tokens == 1000 - result.charged_tokens == assert_ledger_consistent(maker, user.id)
    # Gradio 6 messages: content is a list of text blocks
    assert last.history[0] == {"role": "user", "content": [{"type": "text", "text": "Say hello to the students."}]}
    assert last.history[1]["content"][0]["text"] == last.reply

    # the next turn continues the same seed-003 conversation, with the history as context
    again = _chat(
        maker, settings, account, "And to the teachers?", history=last.history, conversation_id=last.conversation_id
    )[-1]
    assert again.error is None and again.conversation_id == last.conversation_id
    assert again.result.prompt_tokens > result.prompt_tokens  # the first exchange was sent along
    with maker() as s:
        conv = s.get(ModelConversation, last.conversation_id)
        assert conv.user_id == user.id and conv.ai_name == "tiny" and conv.title
        roles = s.scalars(
            select(ModelMessage.role).where(ModelMessage.conversation_id == conv.id).order_by(ModelMessage.id)
        ).all()
        assert roles == ["user", "assistant", "user", "assistant"]
        rows = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).all()
        assert [r.status for r in rows] == ["ok", "ok"] and all(r.model == "tiny" for r in rows)


def _stream_until(maker, settings, account, pieces: int, stop) -> list[playground.ChatProgress]:
    """Stream a long answer and call `stop(gen_task)` once `pieces` deltas arrived."""

    async def main():
        seen: list[playground.ChatProgress] = []
        arrived = asyncio.Event()

        async def consume():
            async for progress in playground.stream_chat(
                maker,
                settings,
                account=account,
                model_name="long",
                message="Write a long story about the sea and the stars.",
                history=[],
                conversation_id=None,
                session_key="tab-1",
            ):
                seen.append(progress)
                if sum(1 for p in seen if p.reply) >= pieces:
                    arrived.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(arrived.wait(), timeout=120)
        await stop(task)
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=60)
        return seen

    return asyncio.run(main())


async def _press_stop(task):
    """The Stop button's handler: closes the chat of this Gradio session from another event."""
    outcome = await playground.stop_chat("tab-1")
    assert outcome is not None


async def _cancel_task(task):
    """Gradio's `cancels=[chat_event]`: the running event's task is cancelled."""
    task.cancel()


@pytest.mark.parametrize("stop", [_press_stop, _cancel_task], ids=["stop-button", "task-cancelled"])
def test_stop_charges_only_what_was_delivered_and_keeps_it(maker, settings, stop):
    add_embedded_model(maker, name="long", num_predict=200)
    user = make_user(maker, settings, tokens=1000)
    account = _account(maker, "user", user.id)

    seen = _stream_until(maker, settings, account, 3, stop)
    shown = max((p.reply for p in seen), key=len)
    assert shown
    with maker() as s:
        row = s.scalars(select(UsageRecord).where(UsageRecord.user_id == user.id)).one()
        assert row.status == "cancelled"
        # the prompt was sent to the model: it is owed, with the completion tokens delivered
        assert 1 <= row.completion_tokens < 200 and row.prompt_tokens > 0
        charged = -sum(
            s.scalars(
                select(QuotaLedger.delta_tokens).where(QuotaLedger.user_id == user.id, QuotaLedger.kind != "grant")
            )
        )
        conv = s.scalars(select(ModelConversation).where(ModelConversation.user_id == user.id)).one()
        reply = s.scalars(
            select(ModelMessage.content).where(
                ModelMessage.conversation_id == conv.id, ModelMessage.role == "assistant"
            )
        ).one()
    assert charged == row.prompt_tokens + row.completion_tokens  # the rest of the reservation came back
    assert assert_ledger_consistent(maker, user.id) == 1000 - charged
    assert reply == shown  # the part that was shown is kept in the history
    if seen[-1].stopped is not None:  # the Stop-button path reports the charge to the page
        assert seen[-1].stopped.charged_tokens == charged
    assert asyncio.run(playground.stop_chat("tab-1")) is None  # nothing left running in that session


def test_an_admin_chats_charged_to_no_user_and_keeps_no_history(maker, settings):
    add_embedded_model(maker, name="tiny", num_predict=8)
    bystander = make_user(maker, settings, tokens=500)
    admin = make_admin(maker, settings)
    account = _account(maker, "admin", str(admin.id))

    last = _chat(maker, settings, account, "Hello", conversation_id=12345)[-1]
    assert last.error is None and last.result.charged_tokens == 0 and not last.result.charged_to_user
    assert last.balance is None and last.conversation_id is None
    with maker() as s:
        row = s.scalars(select(UsageRecord)).one()
        assert row.admin_name == admin.name and row.user_id is None and row.status == "ok"
        assert s.scalars(select(ModelConversation)).first() is None
        assert s.scalars(select(QuotaLedger).where(QuotaLedger.kind != "grant")).first() is None
    assert balance(maker, bystander.id) == 500


def test_refusals_come_back_as_errors_with_nothing_charged(maker, settings):
    add_embedded_model(maker, name="tiny", num_predict=64)
    add_embedded_model(maker, name="off", disable=1)
    poor = make_user(maker, settings, tokens=3)
    account = _account(maker, "user", poor.id)

    last = _chat(maker, settings, account, "Hello")[-1]
    assert last.error.code == "TOKEN_NOT_ENOUGH" and last.error.status == 402
    assert last.result is None
    assert _chat(maker, settings, account, "Hello", model="off")[-1].error.status == 403
    assert _chat(maker, settings, account, "Hello", model="missing")[-1].error.status == 404
    assert _chat(maker, settings, account, "   ")[-1].error.status == 400
    assert assert_ledger_consistent(maker, poor.id) == 3


def test_the_model_list_holds_enabled_shared_and_own_models_with_the_default_first(maker, settings):
    alice = make_user(maker, settings)
    bob = make_user(maker, settings)
    add_embedded_model(maker, name="shared")
    add_embedded_model(maker, name="default", is_default=True)
    add_embedded_model(maker, name="off", disable=1)
    add_embedded_model(maker, name="alices", user_id=alice.id)
    admin = make_admin(maker, settings)
    with maker() as s:
        mine = playground.model_choices(s, playground.account_for(s, f"user:{alice.id}"))
        theirs = playground.model_choices(s, playground.account_for(s, f"user:{bob.id}"))
        everyone = playground.model_choices(s, playground.account_for(s, f"admin:{admin.id}"))
    assert mine.names == ["alices", "default", "shared"] and mine.default == "default"
    assert theirs.names == ["default", "shared"]
    assert everyone.names == ["alices", "default", "shared"]


def test_history_blocks_become_the_gateways_dialog():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "file", "file": {"path": "/x.png"}}]},
        {"role": "assistant", "content": "hello"},
        {"role": "assistant", "content": [{"type": "text", "text": "  "}]},
        {"role": "system", "content": "ignored"},
    ]
    assert playground.dialog_from_history(history) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
