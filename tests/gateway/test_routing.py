"""A model reaches the right engine through the gateway: a local non-embedded base model on
Ollama at Settings.ollama_url (persona under `options`), an online Spark connection over
its signed websocket — both answering the seed stream, charged exactly as reported."""

from __future__ import annotations

from fastapi.testclient import TestClient

from backend.server import create_app
from db.models import ModelFile, ModelInfo
from tests.factories import make_settings, make_user, user_headers
from tests.fakes.ollama_server import OllamaServer
from tests.fakes.spark_server import SparkServer
from tests.gateway.helpers import add_online_model, assert_ledger_consistent, parse_like_desktop_client

DIALOG = [{"role": "user", "content": "Hello"}]


def test_local_model_runs_on_ollama_with_the_persona_as_options(maker, settings, tmp_path):
    with OllamaServer(reply="ollama says hi", prompt_tokens=21) as ollama:
        local = make_settings(settings.database_url, tmp_path, ollama_url=ollama.url)
        with maker.begin() as s:
            persona = ModelFile(system="Be terse.", temperature=0.2, top_k=9, mirostat=2, num_predict=64)
            s.add(persona)
            s.flush()
            s.add(ModelInfo(model_name="qwen", link_type=0, ai_name="qwen2:0.5b", model_file_id=persona.model_file_id))
        user = make_user(maker, settings, tokens=1_000)
        with TestClient(create_app(local, playground=False)) as client:
            headers = user_headers(client, user.username)
            with client.stream(
                "POST", "/textModel/stream", json={"dialog": DIALOG, "model": "qwen"}, headers=headers
            ) as r:
                assert r.status_code == 200
                text, left, frames = parse_like_desktop_client(r.iter_lines(), 1_000)
        sent = ollama.requests[-1]["json"]
    assert text == ollama.reply_text
    assert sent["model"] == "qwen2:0.5b"
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["options"]["temperature"] == 0.2 and sent["options"]["top_k"] == 9
    assert sent["options"]["mirostat"] == 2 and sent["options"]["num_predict"] == 64
    assert frames[-1]["payload"]["usage"]["text"]["total_tokens"] == 21 + len(ollama.deltas)
    assert assert_ledger_consistent(maker, user.id) == left


def test_online_spark_connection_over_its_signed_websocket(client, maker, settings):
    with SparkServer(reply="星火 的 回答", prompt_tokens=11) as spark:
        add_online_model(
            maker,
            settings,
            url=spark.url,
            name="spark",
            protocol="spark",
            base_model="generalv3.5",
            api_key=spark.secret,
        )
        user = make_user(maker, settings, tokens=1_000)
        headers = user_headers(client, user.username)
        r = client.post("/textModel/chat", json={"dialog": DIALOG, "model": "spark"}, headers=headers)
        assert spark.rejected == []
    assert r.status_code == 200, r.text
    assert r.json()["content"] == spark.reply_text
    assert r.json()["consume_token"] == 11 + len(spark.deltas)
    assert assert_ledger_consistent(maker, user.id) == 1_000 - r.json()["consume_token"]
    assert spark.secret not in r.text
