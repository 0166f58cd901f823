"""What the StrangeLoop frontend sends and reads, request by request (its src/api/*.ts and the
views that use each answer), on SQLite, PostgreSQL and MariaDB. The real pages are driven in
tests/clients/test_strangeloop.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from backend.billing import quota
from db.models import ApiKey, ModelConversation, ModelFileEgMessage, ModelInfo, ModelMessage, User
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import UPSTREAM_KEY, add_online_model, assert_ledger_consistent, balance
from tests.live import live_server
from tests.seed003.helpers import count, err, ok

# --- sign-in: /sys/user/login, /create, /nowLoginUser ----------------------------------------


def test_sign_up_sign_in_and_who_am_i(client, maker):
    body = {"account": "xiaoming", "password": "secret-123", "passwordAgain": "secret-123"}
    assert ok(client.post("/sys/user/create", json=body)) is None
    with maker() as s:
        user = s.scalar(select(User).where(User.username == "xiaoming"))
        assert user is not None and user.tokens == 0 and user.password_hash != "secret-123"
    token = ok(client.post("/sys/user/login", json={"account": "xiaoming", "password": "secret-123"}))
    assert isinstance(token, str) and token.count(".") == 2  # a Meteor access token (JWT)
    headers = {"Authorization": f"Bearer {token}"}  # how its request interceptor sends the Admin-Token cookie
    me = ok(client.post("/sys/user/nowLoginUser", headers=headers))
    assert me["id"] == user.id and me["account"] == "xiaoming"
    assert not any("password" in k.lower() for k in me)
    # the same token works on the seed-003 paths and on Meteor's own
    assert ok(client.get("/model/conversation/list", headers=headers)) == {"total": 0, "items": []}
    assert client.get("/auth/me", headers=headers).json()["uuid"] == user.id


def refused(response, code: int) -> str:
    """A /sys/user error as the original answered it: HTTP 200, the status in the body's code."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == code and body["data"] is None, body
    return body["message"]


def test_sign_in_errors_in_the_seed003_envelope(client, maker):
    ok(client.post("/sys/user/create", json={"account": "xiaohong", "password": "secret-123"}))
    taken = refused(client.post("/sys/user/create", json={"account": "xiaohong", "password": "other-123"}), 409)
    assert "taken" in taken
    body = {"account": "xiaogang", "password": "a-123456", "passwordAgain": "b"}
    refused(client.post("/sys/user/create", json=body), 400)
    refused(client.post("/sys/user/create", json={"account": "xiaogang", "password": "short"}), 400)
    refused(client.post("/sys/user/create", json={"password": "secret-123"}), 400)
    refused(client.post("/sys/user/login", json={"account": "xiaohong", "password": "wrong-pass"}), 401)
    refused(client.post("/sys/user/login", json={"account": "nobody", "password": "secret-123"}), 401)
    refused(client.post("/sys/user/login", json=["not", "an", "object"]), 400)
    # who-am-i keeps the real status: the frontend's interceptor then drops the stale token
    err(client.post("/sys/user/nowLoginUser"), 401)
    err(client.post("/sys/user/nowLoginUser", headers={"Authorization": "Bearer undefined"}), 401)
    assert count(maker, User) == 1  # the refused sign-ups wrote nothing


def test_sign_in_is_rate_limited_like_auth_login(client, maker):
    ok(client.post("/sys/user/create", json={"account": "xiaoli", "password": "secret-123"}))
    for n in range(5):  # distinct guesses: the same one again within seconds is a client's retry, counted once
        refused(client.post("/sys/user/login", json={"account": "xiaoli", "password": f"wrong-pass-{n}"}), 401)
    refused(client.post("/sys/user/login", json={"account": "xiaoli", "password": "secret-123"}), 429)


# --- point 4: deleting a message never deletes a conversation --------------------------------


def test_deleting_a_message_never_removes_a_conversation(client, maker, alice):
    """The data-loss case of the issue: the user deletes message N while conversation N exists."""
    home = ok(client.post("/model/conversation", json={"title": "home"}, headers=alice.headers))["id"]
    # made before the conversation with an explicit id below (PostgreSQL's sequence does not see that one)
    other = ok(client.post("/model/conversation", json={}, headers=alice.headers))["id"]
    msgs = [
        ok(
            client.post(
                "/model/message",
                json={"conversationId": home, "role": "user", "content": f"m{i}"},
                headers=alice.headers,
            )
        )
        for i in range(4)
    ]
    assert all(isinstance(m, int) for m in msgs)  # the original answer: data is the new id
    target = msgs[1]
    with maker.begin() as s:  # a conversation whose id is the message's id
        if s.get(ModelConversation, target) is None:
            s.add(ModelConversation(id=target, user_id=alice.id, title="same id as the message"))
    assert ok(client.delete(f"/model/message/{target}", headers=alice.headers)) is None
    with maker() as s:
        assert s.get(ModelConversation, target) is not None and s.get(ModelConversation, home) is not None
        left = list(s.scalars(select(ModelMessage.id).order_by(ModelMessage.id)))
    assert left == [m for m in msgs if m != target]
    # several at once, all or nothing: an id that is no message (here: only a conversation) is a 404
    if other not in msgs:
        err(client.delete(f"/model/message/{msgs[0]},{other}", headers=alice.headers), 404)
    err(client.delete(f"/model/message/{msgs[0]},{max(msgs) + 1000}", headers=alice.headers), 404)
    assert count(maker, ModelMessage) == 3
    ok(client.delete(f"/model/message/{','.join(str(m) for m in left)}", headers=alice.headers))
    assert count(maker, ModelMessage) == 0
    made = {home, target, other}  # `other` may itself be the conversation whose id is `target`
    assert count(maker, ModelConversation) == len(made)
    # conversations go at /model/conversation/{ids}, with their messages
    ok(client.post("/model/message", json={"conversationId": other, "content": "x"}, headers=alice.headers))
    ok(client.delete(f"/model/conversation/{other}", headers=alice.headers))
    assert count(maker, ModelConversation) == len(made - {other}) and count(maker, ModelMessage) == 0


def test_another_users_message_is_not_deleted(client, maker, alice, bob):
    cid = ok(client.post("/model/conversation", json={}, headers=alice.headers))["id"]
    mid = ok(client.post("/model/message", json={"conversationId": cid, "content": "mine"}, headers=alice.headers))
    err(client.delete(f"/model/message/{mid}", headers=bob.headers), 404)
    assert count(maker, ModelMessage) == 1 and count(maker, ModelConversation) == 1


# --- point 3: shapes ---------------------------------------------------------------------------


def test_conversation_list_and_detail_as_the_frontend_reads_them(client, maker, settings, alice):
    with OpenAIServer() as upstream:
        online_id = add_online_model(maker, settings, url=upstream.url, name="online-persona", user_id=alice.id)
    local = ok(
        client.post(
            "/model/manage",
            json={"modelName": "本地助手", "linkType": 0, "aiolId": "", "localmodelName": "qwen2.5:0.5b"},
            headers=alice.headers,
        )
    )
    me = ok(client.post("/sys/user/nowLoginUser", headers=alice.headers))
    # ChooseAi.vue: addConversation({userId, modelInfoId, title: "新会话"})
    first = ok(
        client.post(
            "/model/conversation",
            json={"userId": me["id"], "modelInfoId": online_id, "title": "新会话"},
            headers=alice.headers,
        )
    )
    second = ok(
        client.post(
            "/model/conversation",
            json={"userId": me["id"], "modelInfoId": local["modelId"], "title": "新会话"},
            headers=alice.headers,
        )
    )
    assert first["modelInfoId"] == online_id and second["modelId"] == local["modelId"]
    # ModelStore.updateConversationList: res.data.data.items, no paging parameters; oldest first
    listed = ok(client.get("/model/conversation/list", headers=alice.headers))
    assert listed["total"] == 2 and [c["id"] for c in listed["items"]] == [first["id"], second["id"]]
    assert listed["items"][0]["modelInfo"]["modelName"] == "online-persona"
    assert listed["items"][0]["modelInfo"]["baseModelName"] == "conn-online-persona"  # the connection's aiName
    assert listed["items"][1]["modelInfo"] == listed["items"][1]["modelInfo"] | {
        "modelName": "本地助手",
        "baseModelName": "qwen2.5:0.5b",
    }
    # the document's list keeps its shape: a bare list, newest first
    assert [c["id"] for c in ok(client.get("/model/message/list", headers=alice.headers))] == [
        second["id"],
        first["id"],
    ]
    # AiChatFrame: addMessage answers the id; index.vue reads modelInfoId and modelMessageArrayList
    for role, content in (("user", "你好"), ("assistant", "你好！")):
        body = {"role": role, "content": content, "conversationId": first["id"], "createdTime": "2025/02/26 10:00"}
        assert isinstance(ok(client.post("/model/message", json=body, headers=alice.headers)), int)
    detail = ok(client.get(f"/model/conversation/detail/{first['id']}", headers=alice.headers))
    assert detail["modelInfoId"] == online_id
    assert [m["content"] for m in detail["modelMessageArrayList"]] == ["你好", "你好！"]
    assert detail["modelMessageArrayList"] == detail["modelMessageList"]


def test_models_without_ai_name_as_the_frontend_creates_them(client, maker, alice):
    conn = ok(
        client.post(
            "/model/ol/manage",
            json={
                "aiName": "gpt-4o-mini",
                "aiVersion": "v1",
                "aiApi": "https://api.example.org/v1/chat/completions",
                "aiToken": "sk-provider-123456",
                "aiType": "1",
            },
            headers=alice.headers,
        )
    )
    # ChooseModel.vue, online: {modelName, linkType: 1, description, aiolId, localmodelName: "", ollamaModelName}
    online = ok(
        client.post(
            "/model/manage",
            json={
                "modelName": "翻译官",
                "linkType": 1,
                "description": "d",
                "aiolId": conn["aiId"],
                "localmodelName": "",
                "ollamaModelName": "fanyiguan:latest",
            },
            headers=alice.headers,
        )
    )
    assert online["aiName"] == "gpt-4o-mini" and online["aiolId"] == conn["aiId"]
    assert online["ollamaModelName"] == "fanyiguan:latest" and online["localmodelName"] is None
    assert online["baseModelName"] == "gpt-4o-mini"
    # local: {..., linkType: 0, aiolId: "", localmodelName: "qwen2.5", ollamaModelName}
    local = ok(
        client.post(
            "/model/manage",
            json={
                "modelName": "小助手",
                "linkType": 0,
                "description": "",
                "aiolId": "",
                "localmodelName": "qwen2.5",
                "ollamaModelName": "xiaozhushou:latest",
            },
            headers=alice.headers,
        )
    )
    assert (local["aiName"], local["localmodelName"], local["ollamaModelName"]) == (
        "qwen2.5",
        "qwen2.5",
        "xiaozhushou:latest",
    )
    detail = ok(client.get(f"/model/manage/{local['modelId']}", headers=alice.headers))
    assert detail["localmodelName"] == "qwen2.5" and detail["ollamaModelName"] == "xiaozhushou:latest"
    # the list is oldest first (ChooseModel.vue clicks the last card as the one it just made)
    assert [m["modelId"] for m in ok(client.get("/model/manage", headers=alice.headers))] == [
        online["modelId"],
        local["modelId"],
    ]
    # DialogComp.vue: PUT /model/manage {modelId, modelName, linkType, description, localmodelName, aiolId}
    body = {
        "modelId": local["modelId"],
        "modelName": "小助手",
        "linkType": 0,
        "description": "新的",
        "localmodelName": "llama3.2",
        "aiolId": None,
    }
    assert ok(client.put("/model/manage", json=body, headers=alice.headers))["localmodelName"] == "llama3.2"
    # with none of aiName, aiolId, localmodelName there is nothing to run: 400, nothing stored
    err(client.post("/model/manage", json={"modelName": "空", "linkType": 0, "aiolId": ""}, headers=alice.headers), 400)
    with maker() as s:
        assert s.scalar(select(ModelInfo.model_id).where(ModelInfo.model_name == "空")) is None


def test_persona_spellings_and_the_frontends_save(client, maker, alice):
    model = ok(
        client.post("/model/manage", json={"modelName": "p", "localmodelName": "qwen2.5"}, headers=alice.headers)
    )
    examples = [{"userMessage": "1+1?", "modelMessage": "2"}, {"userMessage": "首都?", "modelMessage": "北京"}]
    ok(
        client.put(
            "/model/manage/detail",
            json={"modelId": model["modelId"], "modelFile": {"modelFileEgmessageList": examples, "mirostatEat": 0.1}},
            headers=alice.headers,
        )
    )
    detail = ok(client.get(f"/model/manage/{model['modelId']}", headers=alice.headers))
    persona = detail["modelFile"]
    assert [(e["userMessage"], e["modelMessage"]) for e in persona["modelFileEgmessageList"]] == [
        ("1+1?", "2"),
        ("首都?", "北京"),
    ]
    assert persona["modelFileEmessageList"] == persona["modelFileEgmessageList"]
    assert "mirostatEta" not in persona and persona["mirostatEat"] == 0.1
    # ModelManager/index.vue's save: the whole detail back, the edited field as typed (a string),
    # its own list deleted from the object and an empty one put in its place
    sent = dict(detail)
    sent["modelFile"] = dict(persona, mirostatEat="0.3", system="你是一个数学老师", modelFileEgmessageList=[])
    ok(client.put("/model/manage/detail", json=sent, headers=alice.headers))
    after = ok(client.get(f"/model/manage/{model['modelId']}", headers=alice.headers))["modelFile"]
    assert after["mirostatEat"] == 0.3 and after["system"] == "你是一个数学老师"  # the edit sticks
    assert [e["userMessage"] for e in after["modelFileEgmessageList"]] == ["1+1?", "首都?"]  # examples kept
    # a client that sends only the original spelling replaces the list; an empty one clears it
    only = {"modelFileId": after["modelFileId"], "modelFileEgmessageList": [{"userMessage": "q", "modelMessage": "a"}]}
    ok(client.put("/model/manage/detail", json=only, headers=alice.headers))
    with maker() as s:
        assert [e.user_message for e in s.scalars(select(ModelFileEgMessage))] == ["q"]
    ok(
        client.put(
            "/model/manage/detail",
            json={"modelFileId": after["modelFileId"], "modelFileEgmessageList": []},
            headers=alice.headers,
        )
    )
    assert count(maker, ModelFileEgMessage) == 0
    # both spellings of eta: mirostatEat wins
    ok(
        client.put(
            "/model/manage/detail",
            json={"modelId": model["modelId"], "mirostatEat": 0.5, "mirostatEta": 0.9},
            headers=alice.headers,
        )
    )
    assert ok(client.get(f"/model/manage/{model['modelId']}", headers=alice.headers))["modelFile"]["mirostatEat"] == 0.5


# --- point 5: the browser's online chat goes through Meteor with a scoped, short-lived key ---


def test_users_view_carries_meteors_v1_and_a_scoped_key(app, client, maker, settings, alice, admin):
    with OpenAIServer(reply="来自上游的回答", prompt_tokens=20) as upstream:
        model_id = add_online_model(maker, settings, url=upstream.url, name="shared-gpt")
        add_online_model(maker, settings, url=upstream.url, name="other-gpt")
        with maker.begin() as s:
            s.execute(update(User).where(User.id == alice.id).values(tokens=0))
        with maker.begin() as s:
            quota.grant(s, user_id=alice.id, tokens=1000, pic_times=0, actor="test", note="test quota")

        mine = ok(client.get(f"/model/manage/{model_id}", headers=alice.headers))["modelAiOnline"]
        assert mine["aiApi"] == "http://testserver/v1/chat/completions"
        assert mine["aiToken"].startswith("sk-") and UPSTREAM_KEY not in str(mine)
        assert upstream.url not in str(mine)
        admins = ok(client.get(f"/model/manage/{model_id}", headers=admin.headers))["modelAiOnline"]
        assert admins["aiApi"] == upstream.url and "…" in admins["aiToken"] and UPSTREAM_KEY not in str(admins)
        with maker() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.user_id == alice.id))
            assert key.scope == "browser" and key.model_id == model_id
            assert timedelta(0) < key.expires_at - datetime.now(UTC) <= timedelta(minutes=settings.browser_key_minutes)
        # not among the user's own keys
        assert client.get("/user/api_keys", headers=alice.headers).json()["api_keys"] == []

        with live_server(app) as base:
            url = f"{base}/v1/chat/completions"
            headers = {"Authorization": f"Bearer {mine['aiToken']}"}
            # AiChatFrame's body: model = the connection's aiName, the history with the UI's own fields
            body = {
                "model": "conn-shared-gpt",
                "messages": [
                    {"role": "user", "id": "id-0", "createAt": 1, "content": "你好"},
                    {"role": "assistant", "id": "id-1", "createAt": 2, "content": "", "status": "loading"},
                ],
                "stream": True,
            }
            with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as r:
                assert r.status_code == 200
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            text = "".join(
                (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                for line in lines
                if line != "data: [DONE]"
            )
            assert text == upstream.reply_text and lines[-1] == "data: [DONE]"
            assert upstream.requests[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
            spent = 1000 - balance(maker, alice.id)
            assert spent == 20 + len(upstream.deltas)
            assert_ledger_consistent(maker, alice.id)
            # the key is for that model only: another model is a 403, charged nothing
            refused = httpx.post(url, json=body | {"model": "other-gpt", "stream": False}, headers=headers, timeout=30)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
            assert 1000 - balance(maker, alice.id) == spent
            models = httpx.get(f"{base}/v1/models", headers=headers, timeout=10).json()["data"]
            assert [m["id"] for m in models] == ["shared-gpt"]
            # and it expires
            with maker.begin() as s:
                s.execute(
                    update(ApiKey)
                    .where(ApiKey.scope == "browser")
                    .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
            expired = httpx.post(url, json=body | {"stream": False}, headers=headers, timeout=30)
            assert expired.status_code == 401
            assert 1000 - balance(maker, alice.id) == spent
        # the next view mints a new key and removes the expired one
        ok(client.get(f"/model/manage/{model_id}", headers=alice.headers))
        with maker() as s:
            keys = list(s.scalars(select(ApiKey).where(ApiKey.user_id == alice.id)))
        assert len(keys) == 1 and keys[0].expires_at > datetime.now(UTC)


@pytest.mark.parametrize("public_url", ["https://meteor.example.org/", None])
def test_chat_url_follows_public_api_url(maker, settings, tmp_path, alice, client, public_url):
    from fastapi.testclient import TestClient

    from backend.server import create_app
    from tests.factories import make_settings

    with OpenAIServer() as upstream:
        model_id = add_online_model(maker, settings, url=upstream.url, name="m")
    app = create_app(
        make_settings(settings.resolved_database_url, tmp_path, public_api_url=public_url), playground=False
    )
    with TestClient(app, base_url="http://api.internal:8000") as c:
        got = ok(c.get(f"/model/manage/{model_id}", headers=alice.headers))["modelAiOnline"]["aiApi"]
    assert got == ("https://meteor.example.org" if public_url else "http://api.internal:8000") + "/v1/chat/completions"
