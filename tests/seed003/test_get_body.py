"""The document shows list filters as a JSON body on GET; they filter like query parameters."""

from tests.seed003.helpers import ok


def test_conversation_list_filters_from_a_json_body(client, alice):
    for ai_name in ("gpt-3.5-turbo-0125", "qwen2.5"):
        ok(client.post("/model/message", json={"userId": "1", "aiName": ai_name}, headers=alice.headers))
    everything = ok(client.request("GET", "/model/message/list", json={}, headers=alice.headers))
    assert len(everything) == 2
    for path in ("/model/message/list", "/model/conversation/list"):
        rows = ok(client.request("GET", path, json={"aiName": "gpt-3.5-turbo-0125"}, headers=alice.headers))
        if path == "/model/conversation/list":  # the original code's list is always {total, items}
            assert rows["total"] == 1
            rows = rows["items"]
        assert [r["aiName"] for r in rows] == ["gpt-3.5-turbo-0125"]
    # a field given in both places keeps the query string's value
    rows = ok(
        client.request(
            "GET", "/model/message/list?aiName=qwen2.5", json={"aiName": "gpt-3.5-turbo-0125"}, headers=alice.headers
        )
    )
    assert [r["aiName"] for r in rows] == ["qwen2.5"]


def test_model_list_filters_from_the_documents_example_body(client, alice):
    ok(client.post("/model/manage", json={"modelName": "小智", "aiName": "qwen2.5"}, headers=alice.headers))
    ok(client.post("/model/manage", json={"modelName": "other", "aiName": "llama3"}, headers=alice.headers))
    body = {"modelName": "小智", "aiName": "qwen2.5", "linkType": "0", "disable": "0"}
    rows = ok(client.request("GET", "/model/manage", json=body, headers=alice.headers))
    assert [r["modelName"] for r in rows] == ["小智"]


def test_a_bad_filter_in_the_body_is_a_400(client, alice):
    r = client.request("GET", "/model/manage", json={"linkType": "seven"}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["data"] is None
    r = client.request("GET", "/model/manage", content=b"{not json", headers=alice.headers)
    assert r.status_code == 200  # not a JSON object: the query string alone decides
