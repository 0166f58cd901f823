"""Seed-003 conversations and messages over HTTP, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from db.models import ModelConversation, ModelMessage
from tests.seed003.helpers import count, err, ok


def new_conversation(client, actor, **body) -> int:
    return ok(client.post("/model/message", json=body, headers=actor.headers))["id"]


def add_message(client, actor, conversation_id: int, content: str, role: str = "user") -> int:
    body = {"conversationId": conversation_id, "role": role, "content": content}
    return ok(client.post("/model/message/detail", json=body, headers=actor.headers))["id"]


def set_created(maker, conversation_id: int, when: datetime) -> None:
    with maker.begin() as s:
        s.execute(update(ModelConversation).where(ModelConversation.id == conversation_id).values(created_time=when))


# --- the document's examples, replayed as written ------------------------------------------


def test_document_examples_replayed(client, maker, alice):
    # 1.13 create: {"userId": "1", "aiName": "gpt-3.5-turbo"} — the userId is ignored for a user
    created = ok(client.post("/model/message", json={"userId": "1", "aiName": "gpt-3.5-turbo"}, headers=alice.headers))
    cid = created["id"]
    assert created["userId"] == alice.id and created["aiName"] == "gpt-3.5-turbo"

    # 1.14 update, with the document's string numbers; "id" names our conversation
    body = {"userId": "1", "id": str(cid), "title": "java类型有哪些", "aiName": "gpt-3.5-turbo"}
    ok(client.put("/model/message", json=body, headers=alice.headers))

    # 1.22 add a message: {"conversationId": "1", "role": "user", "content": ...}
    msg = {"conversationId": str(cid), "role": "user", "content": "什么是api需求文档"}
    ok(client.post("/model/message/detail", json=msg, headers=alice.headers))
    ok(client.post("/model/message/detail/", json=msg | {"id": "999", "role": "assistant"}, headers=alice.headers))

    # 1.11 list: no parameters, a few, all (the document repeats createdTimeStart; the last wins)
    assert [c["id"] for c in ok(client.get("/model/message/list", headers=alice.headers))] == [cid]
    few = ok(client.get("/model/message/list", params={"aiName": "gpt-3.5-turbo-0125"}, headers=alice.headers))
    assert few == []
    every = "aiName=gpt-3.5-turbo&title=java&createdTimeStart=2024/12/18 09:37&createdTimeStart=2024/12/21 09:00"
    rows = ok(client.get(f"/model/message/list?{every}", headers=alice.headers))
    assert [r["id"] for r in rows] == [cid]
    assert rows[0]["title"] == "java类型有哪些" and rows[0]["userId"] == alice.id

    # 1.15 detail, messages in time order, ids made by the server (the "999" was ignored)
    detail = ok(client.get(f"/model/message/detail/{cid}", headers=alice.headers))
    assert detail["title"] == "java类型有哪些" and detail["aiName"] == "gpt-3.5-turbo"
    assert [m["role"] for m in detail["modelMessageList"]] == ["user", "assistant"]
    assert all(m["conversationId"] == cid for m in detail["modelMessageList"])
    assert 999 not in [m["id"] for m in detail["modelMessageList"]]
    assert len(detail["createdTime"]) == len("2024/12/18 08:50") and detail["createdTime"][4] == "/"

    # 1.21 delete messages, 1.12 delete conversations — at the original code's path: its frontend
    # deletes *messages* with DELETE /model/message/{ids} (tests/clients/test_strangeloop_api.py)
    first = detail["modelMessageList"][0]["id"]
    assert ok(client.delete(f"/model/message/detail/{first}", headers=alice.headers)) is None
    assert count(maker, ModelMessage) == 1
    assert ok(client.delete(f"/model/conversation/{cid}", headers=alice.headers)) is None
    assert count(maker, ModelConversation) == 0 and count(maker, ModelMessage) == 0


def test_original_code_paths_share_the_implementation(client, maker, alice):
    cid = ok(client.post("/model/conversation", json={"aiName": "qwen2.5"}, headers=alice.headers))["id"]
    ok(client.put("/model/conversation", json={"id": cid, "title": "from the old frontend"}, headers=alice.headers))
    # the original code's POST /model/message adds a message when the body has a conversationId,
    # and answers its id (as the original did: its frontend keeps `data` as the message id)
    added = ok(client.post("/model/message", json={"conversationId": cid, "content": "hi"}, headers=alice.headers))
    # the original code's list is {total, items} even unpaged (its frontend reads data.items)
    listed = ok(client.get("/model/conversation/list", headers=alice.headers))
    assert [(c["id"], c["title"]) for c in listed["items"]] == [(cid, "from the old frontend")]
    assert listed["total"] == 1
    detail = ok(client.get(f"/model/conversation/detail/{cid}", headers=alice.headers))
    assert [(m["id"], m["content"], m["role"]) for m in detail["modelMessageList"]] == [(added, "hi", "user")]
    ok(client.delete(f"/model/conversation/{cid}", headers=alice.headers))
    assert count(maker, ModelConversation) == 0 and count(maker, ModelMessage) == 0


def test_messages_come_back_in_time_order(client, maker, alice):
    cid = new_conversation(client, alice)
    ids = [add_message(client, alice, cid, f"m{i}", "user" if i % 2 == 0 else "assistant") for i in range(6)]
    # make the stored times disagree with insertion order for two rows; time wins, id breaks ties
    with maker.begin() as s:
        s.execute(
            update(ModelMessage).where(ModelMessage.id == ids[0]).values(created_time=datetime(2030, 1, 1, tzinfo=UTC))
        )
    detail = ok(client.get(f"/model/message/detail/{cid}", headers=alice.headers))
    assert [m["content"] for m in detail["modelMessageList"]] == ["m1", "m2", "m3", "m4", "m5", "m0"]


# --- filters and date ranges ---------------------------------------------------------------


@pytest.fixture
def three_conversations(client, maker, alice):
    a = new_conversation(client, alice, aiName="gpt-3.5-turbo-0125", title="java类的解释")
    b = new_conversation(client, alice, aiName="qwen2.5", title="猫娘扮演")
    c = new_conversation(client, alice, aiName="gpt-3.5-turbo-0125", title="环境生成 100%_done")
    set_created(maker, a, datetime(2024, 12, 18, 9, 37, 0, tzinfo=UTC))
    set_created(maker, b, datetime(2024, 12, 20, 12, 0, 30, tzinfo=UTC))
    set_created(maker, c, datetime(2024, 12, 21, 9, 0, 59, 999000, tzinfo=UTC))
    return a, b, c


def ids_of(client, actor, **params) -> list[int]:
    return [c["id"] for c in ok(client.get("/model/message/list", params=params, headers=actor.headers))]


def test_filter_combinations(client, alice, three_conversations):
    a, b, c = three_conversations
    assert ids_of(client, alice) == [c, b, a]  # newest first
    assert ids_of(client, alice, aiName="gpt-3.5-turbo-0125") == [c, a]
    assert ids_of(client, alice, title="java") == [a]
    assert ids_of(client, alice, title="JAVA") == [a]  # substring, case-insensitive
    assert ids_of(client, alice, title="100%_") == [c]  # LIKE wildcards are literal
    assert ids_of(client, alice, title="%") == [c]
    assert ids_of(client, alice, aiName="qwen2.5", title="java") == []
    assert ids_of(client, alice, aiName="gpt-3.5-turbo-0125", createdTimeStart="2024/12/19 00:00") == [c]
    assert ids_of(client, alice, aiName="gpt-3.5-turbo-0125", title="环境", createdTimeEnd="2024/12/21 09:00") == [c]


def test_date_range_edges_are_inclusive(client, alice, three_conversations):
    a, b, c = three_conversations
    # a was created at exactly 09:37:00: a start of 09:37 includes it, 09:38 does not
    assert ids_of(client, alice, createdTimeStart="2024/12/18 09:37") == [c, b, a]
    assert ids_of(client, alice, createdTimeStart="2024/12/18 09:38") == [c, b]
    # c at 09:00:59.999: an end of 09:00 includes the whole minute, 08:59 does not
    assert ids_of(client, alice, createdTimeEnd="2024/12/21 09:00") == [c, b, a]
    assert ids_of(client, alice, createdTimeEnd="2024/12/21 08:59") == [b, a]
    # start == end on the same minute
    assert ids_of(client, alice, createdTimeStart="2024/12/18 09:37", createdTimeEnd="2024/12/18 09:37") == [a]
    # a bare date end covers the whole day; ISO 8601 works too, with seconds precision
    assert ids_of(client, alice, createdTimeEnd="2024/12/20") == [b, a]
    assert ids_of(client, alice, createdTimeStart="2024-12-20T12:00:30Z", createdTimeEnd="2024-12-20T12:00:30") == [b]
    assert ids_of(client, alice, createdTimeStart="2024-12-20T12:00:31+00:00") == [c]
    assert ids_of(client, alice, createdTimeStart="2024-12-20T20:00:30+08:00", createdTimeEnd="2024-12-20") == [b]


@pytest.mark.parametrize(
    "params",
    [
        {"createdTimeStart": "yesterday"},
        {"createdTimeEnd": "2024/13/01 00:00"},
        {"createdTimeStart": "2024/12/21 00:00", "createdTimeEnd": "2024/12/20 00:00"},
        {"pageNum": "0"},
        {"pageSize": "-1"},
        {"pageNum": "x"},
        {"title": "x" * 51},
    ],
)
def test_bad_list_parameters_are_400(client, alice, params):
    err(client.get("/model/message/list", params=params, headers=alice.headers), 400)


def test_paging_wraps_total_and_items(client, alice, settings):
    ids = [new_conversation(client, alice, title=f"t{i}") for i in range(5)]
    page1 = ok(client.get("/model/message/list", params={"pageNum": 1, "pageSize": 2}, headers=alice.headers))
    page3 = ok(client.get("/model/message/list", params={"pageNum": 3, "pageSize": 2}, headers=alice.headers))
    assert page1 == {"total": 5, "items": page1["items"]} and [c["id"] for c in page1["items"]] == ids[::-1][:2]
    assert [c["id"] for c in page3["items"]] == [ids[0]] and page3["total"] == 5
    capped = ok(client.get("/model/message/list", params={"pageSize": 10**6}, headers=alice.headers))
    assert capped["total"] == 5 and len(capped["items"]) == 5  # capped at query_page_size_max, not an error
    filtered = ok(client.get("/model/message/list", params={"pageSize": 10, "title": "t3"}, headers=alice.headers))
    assert filtered["total"] == 1


# --- id lists ------------------------------------------------------------------------------


@pytest.mark.parametrize("ids", ["1, 2", "1,,2", "1,1", "a", "1,b", "-1", "1.5", ",1", "1,", "1%202"])
@pytest.mark.parametrize(
    "path", ["/model/message/{}", "/model/conversation/{}", "/model/message/detail/{}", "/model/manage/{}"]
)
def test_bad_id_lists_are_400_and_delete_nothing(client, maker, alice, ids, path):
    cid = new_conversation(client, alice)
    add_message(client, alice, cid, "keep me")
    err(client.delete(path.format(ids), headers=alice.headers), 400)
    assert count(maker, ModelConversation) == 1 and count(maker, ModelMessage) == 1


def test_deleting_several_and_unknown_ids(client, maker, alice):
    a, b, c = (new_conversation(client, alice) for _ in range(3))
    for cid in (a, b, c):
        add_message(client, alice, cid, "x")
        add_message(client, alice, cid, "y", "assistant")
    # one unknown id: 404 and nothing deleted
    err(client.delete(f"/model/conversation/{a},{b},{c + 1000}", headers=alice.headers), 404)
    assert count(maker, ModelConversation) == 3 and count(maker, ModelMessage) == 6
    ok(client.delete(f"/model/conversation/{a},{c}", headers=alice.headers))
    assert count(maker, ModelConversation) == 1 and count(maker, ModelMessage) == 2
    assert count(maker, ModelMessage, ModelMessage.conversation_id.in_([a, c])) == 0  # no orphans
    err(client.delete(f"/model/conversation/{a}", headers=alice.headers), 404)  # already gone


# --- ownership -----------------------------------------------------------------------------


def test_users_see_only_their_own_and_admins_see_all(client, maker, alice, bob, admin):
    a = new_conversation(client, alice, title="alice's")
    b = new_conversation(client, bob, title="bob's")
    am = add_message(client, alice, a, "secret of alice")

    assert ids_of(client, alice) == [a] and ids_of(client, bob) == [b]
    assert ids_of(client, bob, userId=alice.id) == [b]  # a user cannot widen the filter
    assert sorted(ids_of(client, admin)) == sorted([a, b])
    assert ids_of(client, admin, userId=alice.id) == [a]

    # bob gets 404 on every kind of access to alice's rows, exactly like an unknown id
    missing = err(client.get(f"/model/message/detail/{a}", headers=bob.headers), 404)
    assert "alice" not in missing
    err(client.put("/model/message", json={"id": a, "title": "mine now"}, headers=bob.headers), 404)
    err(client.post("/model/message/detail", json={"conversationId": a, "content": "x"}, headers=bob.headers), 404)
    err(client.post("/model/message", json={"conversationId": a, "content": "x"}, headers=bob.headers), 404)
    err(client.delete(f"/model/message/detail/{am}", headers=bob.headers), 404)
    err(client.delete(f"/model/message/{am}", headers=bob.headers), 404)
    err(client.delete(f"/model/conversation/{a}", headers=bob.headers), 404)
    err(client.delete(f"/model/conversation/{b},{a}", headers=bob.headers), 404)
    assert count(maker, ModelConversation) == 2 and count(maker, ModelMessage) == 1

    # the admin reads and changes both
    assert ok(client.get(f"/model/message/detail/{a}", headers=admin.headers))["modelMessageList"][0]["id"] == am
    ok(client.put("/model/message", json={"id": b, "title": "renamed by admin"}, headers=admin.headers))
    admin_made = ok(client.post("/model/message", json={"userId": bob.id, "aiName": "x"}, headers=admin.headers))
    assert admin_made["userId"] == bob.id
    err(client.post("/model/message", json={"aiName": "x"}, headers=admin.headers), 400)  # whose conversation?
    err(client.post("/model/message", json={"userId": "nobody"}, headers=admin.headers), 404)
    ok(client.delete(f"/model/conversation/{a},{b}", headers=admin.headers))
    assert count(maker, ModelConversation) == 1 and count(maker, ModelMessage) == 0


def test_auth_is_required(client, alice):
    err(client.get("/model/message/list"), 401)
    err(client.get("/model/message/list", headers={"Authorization": "Bearer nonsense"}), 401)
    err(client.post("/model/message", json={}, headers={"Authorization": "Basic abc"}), 401)


# --- bad bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("put", "/model/message", {"title": "no id"}),
        ("put", "/model/message", {"id": "one", "title": "x"}),
        ("put", "/model/message", {"id": "{cid}", "title": "x" * 51}),
        ("post", "/model/message", {"aiName": "y" * 51}),
        ("post", "/model/message", ["not", "an", "object"]),
        ("post", "/model/message/detail", {"content": "no conversation"}),
        ("post", "/model/message/detail", {"conversationId": "{cid}", "content": 5}),
        ("post", "/model/message/detail", {"conversationId": "{cid}", "role": "r" * 51}),
        ("post", "/model/message/detail", {"conversationId": "{cid}", "promptTokens": -1}),
    ],
)
def test_bad_bodies_are_400_and_change_nothing(client, maker, alice, method, path, body):
    cid = new_conversation(client, alice, title="before")
    if isinstance(body, dict):
        body = {k: (str(cid) if v == "{cid}" else v) for k, v in body.items()}
    err(client.request(method.upper(), path, json=body, headers=alice.headers), 400)
    detail = ok(client.get(f"/model/message/detail/{cid}", headers=alice.headers))
    assert detail["title"] == "before" and detail["modelMessageList"] == []
    assert count(maker, ModelConversation) == 1


def test_invalid_json_is_400(client, alice):
    r = client.post(
        "/model/message", content=b"{not json", headers=alice.headers | {"Content-Type": "application/json"}
    )
    err(r, 400)
