"""Seed-003 models and personas over HTTP, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from db.models import ModelFile, ModelFileEgMessage, ModelInfo
from tests.seed003.helpers import count, err, ok

# The document's examples, as written (ids are placeholders the tests replace with real ones).
DOC_CREATE = {
    "modelName": "小智",
    "aiName": "qwen2.5",
    "linkType": "0",
    "description": "AI小智是智造领航系统中的智能助手。",
}
DOC_LIST = {
    "modelName": "小智",
    "aiName": "qwen2.5",
    "createdTimeStart": "2024/12/19 08:52",
    "createdTimeEnd": "2024/12/20 08:52",
    "linkType": "0",
    "disable": "0",
}
DOC_UPDATE = {
    "modelName": "小智",
    "aiName": "qwen2.5",
    "linkType": "0",
    "disable": "0",
    "description": "就这样",
    "modelId": "1",
}
DOC_PERSONA = {
    "system": "你是一个智造领航系统中的智能AI助手小智",
    "modelFileId": "1",
    "mirostat": "2",
    "mirostatEat": "0.1",
    "mirostatTau": "5.0",
    "numCtx": "2568",
    "repeatLastN": "0",
    "repeatPenalty": "1.1",
    "temperature": "0.5",
    "seed": "1734674529",
    "stop": None,
    "tfsZ": "1.5",
    "numPredict": "258",
    "topP": "0.6",
    "minP": "0.6",
    "modelFileEmessageList": [
        {
            "messageId": "1",
            "userMessage": "打开销售管理页面",
            "modelMessage": "好的我已经打开了页面#/mes/detail#",
            "modelFileId": "1",
        },
        {
            "messageId": "2",
            "userMessage": "什么是智造领航",
            "modelMessage": "智造领航系统是.......",
            "modelFileId": "1",
        },
    ],
}


def create_model(client, actor, **body) -> dict:
    return ok(client.post("/model/manage", json={"aiName": "qwen2.5", **body}, headers=actor.headers))


def detail(client, actor, model_id: int) -> dict:
    return ok(client.get(f"/model/manage/{model_id}", headers=actor.headers))


def test_document_examples_replayed(client, maker, alice):
    created = ok(client.post("/model/manage", json=DOC_CREATE, headers=alice.headers))
    model_id, file_id = created["modelId"], created["modelFileId"]
    assert created["userId"] == alice.id and created["linkType"] == 0 and file_id is not None
    assert count(maker, ModelFile) == 1  # the empty persona came with it

    # 2.11 list with every parameter of the example (the model was created "2024/12/19 10:00")
    with maker.begin() as s:
        s.execute(
            update(ModelInfo)
            .where(ModelInfo.model_id == model_id)
            .values(created_time=datetime(2024, 12, 19, 10, 0, tzinfo=UTC))
        )
    listed = ok(client.get("/model/manage", params=DOC_LIST, headers=alice.headers))
    assert [m["modelId"] for m in listed] == [model_id]
    assert ok(client.get("/model/manage/", params=DOC_LIST, headers=alice.headers)) == listed  # trailing slash

    # 2.14 update; 2.31 persona update; 2.12 detail
    ok(client.put("/model/manage", json=DOC_UPDATE | {"modelId": str(model_id)}, headers=alice.headers))
    ok(client.put("/model/manage/detail", json=DOC_PERSONA | {"modelFileId": str(file_id)}, headers=alice.headers))
    got = detail(client, alice, model_id)
    assert got["description"] == "就这样" and got["updatedTime"] and got["updateTime"] == got["updatedTime"]
    persona = got["modelFile"]
    assert persona["system"] == DOC_PERSONA["system"] and persona["modelFileId"] == file_id
    assert (persona["mirostat"], persona["mirostatEat"], persona["mirostatTau"]) == (2, 0.1, 5.0)
    # no second spelling beside the document's: the StrangeLoop frontend sends every field back
    # and a stale mirostatEta would overwrite its user's edit (tests/clients/test_strangeloop_api.py)
    assert "mirostatEta" not in persona
    assert (persona["numCtx"], persona["seed"], persona["numPredict"], persona["stop"]) == (2568, 1734674529, 258, None)
    assert (persona["temperature"], persona["topP"], persona["minP"], persona["tfsZ"]) == (0.5, 0.6, 0.6, 1.5)
    examples = persona["modelFileEmessageList"]
    assert [(e["userMessage"], e["modelFileId"]) for e in examples] == [
        ("打开销售管理页面", file_id),
        ("什么是智造领航", file_id),
    ]
    assert "modelAiOnline" not in got  # a local model has no connection

    # 2.15 delete: the persona and its examples go too
    ok(client.delete(f"/model/manage/{model_id}", headers=alice.headers))
    assert count(maker, ModelInfo) == 0 and count(maker, ModelFile) == 0 and count(maker, ModelFileEgMessage) == 0


def test_online_model_detail_carries_the_connection_masked(client, alice):
    conn = {
        "aiId": "1",
        "aiName": "gpt-3.5-turbo-0125",
        "aiVersion": "gpt-3.5-turbo-0125",
        "aiToken": "sk-qxoWrNw4JDPobNAZxkIV11rXP8cFFTtZa4kUbYthQAhxdJJq",
        "aiApi": "https://api.bianxie.ai/v1/chat/completions",
        "aiType": "1",
        "timeout": "5000",
    }
    ai_id = ok(client.post("/model/ol/manage", json=conn, headers=alice.headers))["aiId"]
    model = create_model(client, alice, modelName="GPT-3.5", aiName="gpt-3.5-turbo-0125", linkType="1")
    assert model["aiolId"] == ai_id  # linked by the matching aiName
    r = client.get(f"/model/manage/{model['modelId']}", headers=alice.headers)
    got = ok(r)
    # a user's own view: Meteor's /v1 and a short-lived key of the user's for this model, so the
    # StrangeLoop frontend's browser-side chat goes through Meteor (tests/clients/test_strangeloop_api.py)
    assert got["modelAiOnline"]["aiId"] == ai_id and got["modelAiOnline"]["aiToken"].startswith("sk-")
    assert got["modelAiOnline"]["aiApi"] == "http://testserver/v1/chat/completions"
    assert conn["aiToken"] not in r.text and conn["aiApi"] not in r.text
    # the connection itself still shows its key masked
    assert ok(client.get(f"/model/ol/manage/{ai_id}", headers=alice.headers))["aiToken"] == "sk-…dJJq"
    assert got["modelFile"]["modelFileEmessageList"] == [] and got["modelFile"]["temperature"] is None


def test_link_by_id_and_unlink(client, alice, bob):
    mine = ok(
        client.post("/model/ol/manage", json={"aiName": "c1", "aiApi": "https://a.example/v1"}, headers=alice.headers)
    )
    bobs = ok(
        client.post("/model/ol/manage", json={"aiName": "c2", "aiApi": "https://b.example/v1"}, headers=bob.headers)
    )
    model = create_model(client, alice, modelName="m", linkType=1, aiolId=mine["aiId"])
    assert model["aiolId"] == mine["aiId"]
    err(
        client.post(
            "/model/manage", json={"modelName": "n", "aiName": "x", "aiId": bobs["aiId"]}, headers=alice.headers
        ),
        404,
    )
    body = {"modelId": model["modelId"], "aiolId": None}
    assert ok(client.put("/model/manage", json=body, headers=alice.headers))["aiolId"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": "2.5"},
        {"temperature": -0.1},
        {"topP": 1.5},
        {"minP": "-0.1"},
        {"mirostat": 3},
        {"mirostat": "1.5"},
        {"mirostatEat": "fast"},
        {"numCtx": 0},
        {"numPredict": -3},
        {"repeatLastN": -2},
        {"topK": -1},
        {"stop": ["x"] * 9},
        {"stop": [""]},
        {"seed": "not a seed"},
        {"system": 42},
        {"modelFileEmessageList": [{"userMessage": "only a question"}]},
        {"modelFileEmessageList": "not a list"},
    ],
)
def test_one_invalid_persona_value_is_400_and_nothing_changes(client, maker, alice, bad):
    model = create_model(client, alice, modelName="persona")
    file_id = model["modelFileId"]
    ok(client.put("/model/manage/detail", json=DOC_PERSONA | {"modelFileId": file_id}, headers=alice.headers))
    before = detail(client, alice, model["modelId"])
    # every other value is valid and different, so a partial write would show
    attempt = DOC_PERSONA | {
        "modelFileId": file_id,
        "system": "changed",
        "temperature": 0.9,
        "numCtx": 4096,
        "modelFileEmessageList": [{"userMessage": "new q", "modelMessage": "new a"}],
    }
    message = err(client.put("/model/manage/detail", json=attempt | bad, headers=alice.headers), 400)
    assert message
    after = detail(client, alice, model["modelId"])
    assert after["modelFile"] == before["modelFile"]
    assert after["updatedTime"] == before["updatedTime"]
    assert count(maker, ModelFileEgMessage) == 2


def test_persona_update_is_partial_and_replaces_examples_as_a_whole(client, maker, alice):
    model = create_model(client, alice, modelName="partial")
    file_id = model["modelFileId"]
    ok(client.put("/model/manage/detail", json=DOC_PERSONA | {"modelFileId": file_id}, headers=alice.headers))
    first_ids = [e["messageId"] for e in detail(client, alice, model["modelId"])["modelFile"]["modelFileEmessageList"]]

    # only temperature: everything else keeps its value, the examples stay
    ok(client.put("/model/manage/detail", json={"modelFileId": file_id, "temperature": 1.2}, headers=alice.headers))
    persona = detail(client, alice, model["modelId"])["modelFile"]
    assert persona["temperature"] == 1.2 and persona["numCtx"] == 2568 and persona["system"] == DOC_PERSONA["system"]
    assert [e["messageId"] for e in persona["modelFileEmessageList"]] == first_ids

    # a new list replaces the old one; stop as a list or one string; null clears; mirostatEta spelled right
    body = {
        "modelId": model["modelId"],
        "stop": ["</s>", "User:"],
        "mirostatEta": 0.2,
        "seed": None,
        "topK": 40,
        "modelFileEmessageList": [{"userMessage": "q", "modelMessage": "a", "messageId": first_ids[0]}],
    }
    ok(client.put("/model/manage/detail", json=body, headers=alice.headers))
    persona = detail(client, alice, model["modelId"])["modelFile"]
    assert persona["stop"] == ["</s>", "User:"] and persona["mirostatEat"] == 0.2 and persona["seed"] is None
    assert persona["topK"] == 40
    assert [(e["userMessage"], e["modelMessage"]) for e in persona["modelFileEmessageList"]] == [("q", "a")]
    assert count(maker, ModelFileEgMessage) == 1
    with maker() as s:
        assert json.loads(s.get(ModelFile, file_id).stop) == ["</s>", "User:"]

    ok(client.put("/model/manage/detail", json={"modelFileId": file_id, "stop": "###"}, headers=alice.headers))
    assert detail(client, alice, model["modelId"])["modelFile"]["stop"] == ["###"]
    ok(
        client.put(
            "/model/manage/detail", json={"modelFileId": file_id, "modelFileEmessageList": []}, headers=alice.headers
        )
    )
    assert count(maker, ModelFileEgMessage) == 0

    err(client.put("/model/manage/detail", json={"temperature": 1}, headers=alice.headers), 400)  # which persona?
    err(client.put("/model/manage/detail", json={"modelFileId": 10**6, "temperature": 1}, headers=alice.headers), 404)


def test_model_name_is_unique(client, maker, alice, bob):
    create_model(client, alice, modelName="小智")
    err(client.post("/model/manage", json=DOC_CREATE, headers=bob.headers), 409)
    other = create_model(client, bob, modelName="other")
    err(client.put("/model/manage", json={"modelId": other["modelId"], "modelName": "小智"}, headers=bob.headers), 409)
    assert count(maker, ModelInfo) == 2 and count(maker, ModelFile) == 2  # the refused create left no persona
    ok(client.put("/model/manage", json={"modelId": other["modelId"], "modelName": "other"}, headers=bob.headers))


@pytest.mark.parametrize(
    "body",
    [
        {"aiName": "qwen2.5"},
        {"modelName": "x"},
        {"modelName": "x" * 51, "aiName": "q"},
        {"modelName": "x", "aiName": "q", "linkType": 2},
        {"modelName": "x", "aiName": "q", "linkType": "local"},
        {"modelName": "x", "aiName": "q", "disable": 5},
        {"modelName": "x", "aiName": "q", "description": "d" * 501},
        {"modelName": 5, "aiName": "q"},
    ],
)
def test_bad_model_bodies_are_400(client, maker, alice, body):
    err(client.post("/model/manage", json=body, headers=alice.headers), 400)
    assert count(maker, ModelInfo) == 0 and count(maker, ModelFile) == 0


def test_filters(client, maker, alice, admin):
    a = create_model(client, alice, modelName="小智 helper", aiName="qwen2.5")
    b = create_model(client, alice, modelName="GPT-3.5", aiName="gpt-3.5-turbo-0125", linkType=1)
    c = create_model(client, alice, modelName="retired", aiName="qwen2.5", disable=1)
    shared = create_model(client, admin, modelName="shared one", aiName="qwen2.5")
    ids = lambda **p: [m["modelId"] for m in ok(client.get("/model/manage", params=p, headers=alice.headers))]  # noqa: E731
    # oldest first: the StrangeLoop frontend opens the last card as the model it just created
    assert ids() == [a["modelId"], b["modelId"], c["modelId"], shared["modelId"]]
    assert ids(modelName="小智") == [a["modelId"]]
    assert ids(aiName="qwen2.5", disable=0) == [a["modelId"], shared["modelId"]]
    assert ids(linkType=1) == [b["modelId"]]
    assert ids(disable="1") == [c["modelId"]]
    assert ids(userId=alice.id, aiName="qwen2.5") == [a["modelId"], c["modelId"]]
    with maker.begin() as s:
        s.execute(
            update(ModelInfo)
            .where(ModelInfo.model_id == a["modelId"])
            .values(created_time=datetime(2024, 12, 18, 8, 52, tzinfo=UTC))
        )
    assert ids(createdTimeEnd="2024/12/18 08:52") == [a["modelId"]]
    assert ids(createdTimeStart="2024/12/18 08:53", aiName="qwen2.5", disable=0) == [shared["modelId"]]
    err(client.get("/model/manage", params={"linkType": 3}, headers=alice.headers), 400)
    err(client.get("/model/manage", params={"createdTimeStart": "soon"}, headers=alice.headers), 400)
    paged = ok(client.get("/model/manage", params={"pageNum": 2, "pageSize": 3}, headers=alice.headers))
    assert paged["total"] == 4 and [m["modelId"] for m in paged["items"]] == [shared["modelId"]]


def test_ownership_and_shared_models(client, maker, alice, bob, admin):
    mine = create_model(client, alice, modelName="alice's")
    shared = create_model(client, admin, modelName="shared")
    assert shared["userId"] is None
    for_bob = create_model(client, admin, modelName="for bob", userId=bob.id)
    assert for_bob["userId"] == bob.id

    assert {m["modelName"] for m in ok(client.get("/model/manage", headers=bob.headers))} == {"shared", "for bob"}
    assert len(ok(client.get("/model/manage", headers=admin.headers))) == 3
    assert [
        m["modelName"] for m in ok(client.get("/model/manage", params={"userId": alice.id}, headers=admin.headers))
    ] == ["alice's"]

    # bob: 404 on alice's model whatever he tries; the shared model is readable, not changeable
    mid, fid = mine["modelId"], mine["modelFileId"]
    err(client.get(f"/model/manage/{mid}", headers=bob.headers), 404)
    err(client.put("/model/manage", json={"modelId": mid, "description": "x"}, headers=bob.headers), 404)
    err(client.put("/model/manage/detail", json={"modelFileId": fid, "temperature": 1}, headers=bob.headers), 404)
    err(client.delete(f"/model/manage/{mid}", headers=bob.headers), 404)
    err(client.delete(f"/model/manage/{for_bob['modelId']},{mid}", headers=bob.headers), 404)
    assert detail(client, bob, shared["modelId"])["modelName"] == "shared"
    err(client.put("/model/manage", json={"modelId": shared["modelId"], "disable": 1}, headers=bob.headers), 403)
    err(client.delete(f"/model/manage/{shared['modelId']}", headers=bob.headers), 403)
    assert count(maker, ModelInfo) == 3

    # the admin changes anyone's
    ok(client.put("/model/manage/detail", json={"modelFileId": fid, "temperature": 0.3}, headers=admin.headers))
    assert detail(client, alice, mid)["modelFile"]["temperature"] == 0.3
    ok(client.delete(f"/model/manage/{mid},{shared['modelId']}", headers=admin.headers))
    assert count(maker, ModelInfo) == 1 and count(maker, ModelFile) == 1


def test_deleting_models_leaves_no_orphans(client, maker, alice):
    made = [create_model(client, alice, modelName=f"m{i}") for i in range(3)]
    for m in made:
        body = {
            "modelFileId": m["modelFileId"],
            "modelFileEmessageList": [{"userMessage": "q", "modelMessage": "a"}] * 3,
        }
        ok(client.put("/model/manage/detail", json=body, headers=alice.headers))
    assert count(maker, ModelFileEgMessage) == 9
    err(client.delete(f"/model/manage/{made[0]['modelId']},{made[2]['modelId'] + 99}", headers=alice.headers), 404)
    assert count(maker, ModelInfo) == 3 and count(maker, ModelFileEgMessage) == 9
    ok(client.delete(f"/model/manage/{made[0]['modelId']},{made[2]['modelId']}", headers=alice.headers))
    assert count(maker, ModelInfo) == 1 and count(maker, ModelFile) == 1
    kept = made[1]["modelFileId"]
    assert count(maker, ModelFileEgMessage) == 3
    assert count(maker, ModelFileEgMessage, ModelFileEgMessage.model_file_id != kept) == 0


def test_unknown_and_malformed_model_ids(client, alice):
    err(client.get("/model/manage/999999", headers=alice.headers), 404)
    err(client.get("/model/manage/abc", headers=alice.headers), 400)
    err(client.get(f"/model/manage/{2**70}", headers=alice.headers), 404)
    err(client.put("/model/manage", json={"modelId": "x"}, headers=alice.headers), 400)
    err(client.put("/model/manage", json={"description": "no id"}, headers=alice.headers), 400)
