"""Model name -> provider, base model, persona and connection."""

from __future__ import annotations

import pytest

from backend import security
from backend.catalog import registry as model_registry
from backend.errors import ServiceError
from db.models import ModelAiOnline, ModelFile, ModelInfo
from tests.factories import make_user
from tests.gateway.helpers import EXAMPLES, SYSTEM_PROMPT, UPSTREAM_KEY, add_default_embedded, add_online_model


def _resolve(maker, settings, name, user_id=None, admin=False):
    with maker() as s:
        return model_registry.resolve(s, settings, name=name, user_id=user_id, admin=admin)


def test_resolution_of_every_kind_of_model(maker, settings):
    add_default_embedded(maker)
    add_online_model(maker, settings, url="https://api.example.test/v1", name="gpt", timeout=12, temperature=0.4)
    add_online_model(maker, settings, url="wss://spark.example.test/v3.5/chat", name="spark", protocol="spark")
    owner = make_user(maker, settings)
    with maker.begin() as s:
        persona = ModelFile(system="local persona", top_k=5)
        s.add(persona)
        s.flush()
        s.add(ModelInfo(model_name="qwen", link_type=0, ai_name="qwen2:0.5b", model_file_id=persona.model_file_id))
        s.add(ModelInfo(model_name="mine", link_type=0, ai_name="llama3", user_id=owner.id))
        s.add(ModelInfo(model_name="off", link_type=0, ai_name="llama3", disable=1))

    default = _resolve(maker, settings, None)
    assert (default.name, default.provider, default.base_model) == ("SmolLM2", "embedded", "smollm2-135m-instruct")
    assert default.params.num_ctx == 2048 and default.system

    gpt = _resolve(maker, settings, "gpt")
    assert (gpt.provider, gpt.base_url, gpt.timeout, gpt.base_model) == (
        "openai",
        "https://api.example.test/v1",
        12.0,
        "fake-model",
    )
    assert gpt.api_key == UPSTREAM_KEY and UPSTREAM_KEY not in repr(gpt)
    assert gpt.system == SYSTEM_PROMPT and gpt.examples == EXAMPLES and gpt.params.temperature == 0.4
    assert _resolve(maker, settings, "spark").provider == "spark"

    qwen = _resolve(maker, settings, "qwen")
    assert (qwen.provider, qwen.base_url, qwen.base_model) == ("ollama", settings.ollama_url, "qwen2:0.5b")
    assert qwen.params.top_k == 5 and qwen.examples == []

    assert _resolve(maker, settings, "mine", user_id=owner.id).provider == "ollama"
    for name, user_id, status in (("mine", None, 404), ("off", owner.id, 403), ("ghost", owner.id, 404)):
        with pytest.raises(ServiceError) as err:
            _resolve(maker, settings, name, user_id=user_id)
        assert (err.value.code, err.value.status) == ("MODEL_ERROR", status)
    assert _resolve(maker, settings, "off", admin=True).disabled  # admins may test a disabled model

    with maker() as s:
        usable = [m.model_name for m in model_registry.usable_models(s, user_id=owner.id)]
    assert sorted(usable) == ["SmolLM2", "gpt", "mine", "qwen", "spark"]  # MySQL sorts case-blind


def test_broken_or_missing_configuration_is_a_clear_error(maker, settings):
    with pytest.raises(ServiceError) as err:
        _resolve(maker, settings, None)
    assert err.value.status == 404 and "default" in err.value.message
    with maker.begin() as s:
        conn = ModelAiOnline(ai_api="https://x.test/v1", ai_name="bad", protocol="carrier-pigeon")
        wrong_key = ModelAiOnline(
            ai_api="https://x.test/v1",
            ai_name="other-key",
            ai_token_encrypted=security.encrypt_secret(settings, "sk-x").replace("A", "B", 1) + "x",
        )
        s.add_all([conn, wrong_key])
        s.flush()
        s.add(ModelInfo(model_name="pigeon", link_type=1, aiol_id=conn.ai_id))
        s.add(ModelInfo(model_name="garbled", link_type=1, aiol_id=wrong_key.ai_id))
        s.add(ModelInfo(model_name="orphan", link_type=1))
    for name, words in (("pigeon", "protocol"), ("garbled", "decrypted"), ("orphan", "no online connection")):
        with pytest.raises(ServiceError) as err:
            _resolve(maker, settings, name)
        assert err.value.status == 502 and words in err.value.message
