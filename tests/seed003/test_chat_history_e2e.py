"""End to end: a model configured through the seed-003 API answers a seed-000 chat, and the
exchange shows up in the seed-003 history with its token counts."""

from __future__ import annotations

from backend.billing import quota
from tests.factories import make_user, user_headers
from tests.fakes.openai_server import OpenAIServer
from tests.seed003.helpers import ok


def test_chat_through_a_model_made_by_the_api_writes_history(client, maker, settings, admin):
    with OpenAIServer(reply="Bubble sort swaps neighbours", prompt_tokens=30, api_key="sk-up-key-5678") as upstream:
        conn = ok(
            client.post(
                "/model/ol/manage",
                json={"aiName": "campus", "aiApi": upstream.url, "aiToken": "sk-up-key-5678"},
                headers=admin.headers,
            )
        )
        model = ok(
            client.post(
                "/model/manage",
                json={"modelName": "tutor", "aiName": "fake-model", "linkType": 1, "aiolId": conn["aiId"]},
                headers=admin.headers,
            )
        )
        persona = {"modelFileId": model["modelFileId"], "system": "You are a tutor.", "temperature": 0.4}
        ok(client.put("/model/manage/detail", json=persona, headers=admin.headers))

        user = make_user(maker, settings, tokens=10_000)
        headers = user_headers(client, user.username)
        dialog = [{"role": "user", "content": "Explain bubble sort"}]
        r = client.post("/textModel/chat", json={"dialog": dialog, "model": "tutor"}, headers=headers)
        assert r.status_code == 200 and r.json()["code"] == 0, r.text
        first = r.json()
        sent = upstream.requests[-1]["json"]
        assert sent["messages"][0] == {"role": "system", "content": "You are a tutor."} and sent["temperature"] == 0.4

        cid = first["conversation_id"]
        listed = ok(client.get("/model/message/list", headers=headers))
        assert [c["id"] for c in listed] == [cid] and listed[0]["aiName"] == "tutor"
        assert listed[0]["title"] and len(listed[0]["title"]) <= 50
        detail = ok(client.get(f"/model/message/detail/{cid}", headers=headers))
        messages = detail["modelMessageList"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "Explain bubble sort"),
            ("assistant", upstream.reply_text),
        ]
        assert messages[0]["promptTokens"] == 30 and messages[1]["completionTokens"] == len(upstream.deltas)
        assert first["consume_token"] == 30 + len(upstream.deltas)

        # a follow-up names the conversation and is appended to it
        follow = {"dialog": dialog + [{"role": "user", "content": "And quick sort?"}], "model": "tutor"}
        r = client.post("/textModel/chat", json=follow | {"conversation_id": cid}, headers=headers)
        assert r.status_code == 200 and r.json()["conversation_id"] == cid, r.text
        detail = ok(client.get(f"/model/message/detail/{cid}", headers=headers))
        assert [m["content"] for m in detail["modelMessageList"]][2:] == ["And quick sort?", upstream.reply_text]
    with maker() as s:
        assert quota.balance(s, user.id).tokens == 10_000 - 2 * first["consume_token"]
