"""The provider factory and the offline token counter."""

from __future__ import annotations

import pytest

from backend.providers.base import ProviderError
from backend.providers.embedded_llama import EmbeddedEngine
from backend.providers.ollama_chat import OllamaChatProvider
from backend.providers.openai_chat import OpenAIChatProvider
from backend.providers.registry import PROTOCOLS, chat_provider, get_embedded
from backend.providers.spark_chat import SparkChatProvider
from backend.providers.tokens import count_text_tokens, count_tokens
from backend.providers.upstream import redact, short_cause


def test_each_protocol_builds_its_provider():
    assert PROTOCOLS == ("embedded", "openai", "ollama", "spark")
    assert isinstance(chat_provider("openai", base_url="http://127.0.0.1:9/v1", api_key="sk-x"), OpenAIChatProvider)
    ollama = chat_provider("ollama", base_url=None)
    assert isinstance(ollama, OllamaChatProvider) and ollama.base_url == "http://127.0.0.1:11434"
    assert isinstance(chat_provider("spark", base_url="ws://127.0.0.1:9/v3.5/chat", api_key="a:b:c"), SparkChatProvider)
    embedded = chat_provider("embedded")
    assert isinstance(embedded, EmbeddedEngine) and embedded is get_embedded() is chat_provider("embedded")


def test_unknown_protocol_and_missing_url_are_clear_errors():
    with pytest.raises(ProviderError) as caught:
        chat_provider("gopher", base_url="http://x")
    assert caught.value.status == 400 and "gopher" in str(caught.value) and "openai" in str(caught.value)
    for protocol in ("openai", "spark"):
        with pytest.raises(ProviderError) as caught:
            chat_provider(protocol, base_url=None, api_key="sk-secret-value")
        assert caught.value.status == 400 and "sk-secret-value" not in str(caught.value)


def test_offline_token_counts():
    messages = [{"role": "user", "content": "hello world"}]
    # the chat template adds the default system turn and the role markers around the two words
    assert count_tokens(messages) > count_text_tokens("hello world") == 2
    assert count_tokens(messages + [{"role": "assistant", "content": "hi"}]) > count_tokens(messages)
    assert count_text_tokens("") == 0
    assert count_text_tokens("北京是中国的首都。") > 0


def test_redaction_of_keys_in_causes():
    text = "bad key sk-abcdef123456 and Bearer tok_123 and api_key=xyz987 and my-own-secret"
    cleaned = redact(text, "my-own-secret")
    for secret in ("sk-abcdef123456", "tok_123", "xyz987", "my-own-secret"):
        assert secret not in cleaned
    assert short_cause("x" * 500).endswith("…") and len(short_cause("x" * 500)) == 200
    assert short_cause("line one\n  line two") == "line one line two"
