"""The Ollama provider against a real local NDJSON server."""

from __future__ import annotations

import socket

import pytest

from backend.providers.base import ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.providers.ollama_chat import OllamaChatProvider
from backend.providers.params import PersonaParams, to_ollama_options
from backend.providers.registry import chat_provider
from backend.providers.tokens import count_text_tokens, count_tokens
from backend.providers.upstream import UpstreamHTTPError
from tests.factories import make_settings
from tests.fakes.ollama_server import OllamaServer
from tests.providers.aio import first_text, items, run

MESSAGES = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "Explain gravity briefly"},
]
KEY = "sk-ollama-proxy-secret-987654321"


def _request(**kw) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, model="fake-llama", **kw)


def test_stream_yields_deltas_then_eval_counts(tmp_path):
    with OllamaServer("Things fall down", prompt_tokens=21) as upstream:
        settings = make_settings("sqlite://", tmp_path, ollama_url=upstream.url)
        provider = chat_provider("ollama", settings=settings, timeout=5)
        events = items(provider.stream(_request()))
        sent = upstream.requests[-1]

    assert events == ["Things ", "fall ", "down", Usage(prompt_tokens=21, completion_tokens=3)]
    assert sent["path"] == "/api/chat" and sent["json"]["stream"] is True
    assert sent["json"]["model"] == "fake-llama" and sent["json"]["messages"] == MESSAGES
    assert sent["json"]["options"] == {"num_predict": 512}


def test_non_stream_returns_text_and_usage():
    with OllamaServer("All at once now", prompt_tokens=11) as upstream:
        text, usage = run(OllamaChatProvider(base_url=upstream.url, timeout=5).complete(_request()))
        assert upstream.requests[-1]["json"]["stream"] is False
    assert text == "All at once now" and usage == Usage(prompt_tokens=11, completion_tokens=4)


def test_missing_eval_counts_are_counted_offline():
    with OllamaServer("No counts from this host", include_usage=False) as upstream:
        provider = OllamaChatProvider(base_url=upstream.url, timeout=5)
        *deltas, usage = items(provider.stream(_request()))
    text = "".join(deltas)
    assert text == "No counts from this host"
    assert usage == Usage(prompt_tokens=count_tokens(MESSAGES), completion_tokens=count_text_tokens(text))
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0


def test_every_persona_parameter_goes_under_options():
    params = PersonaParams(
        mirostat=1,
        mirostat_eta=0.2,
        mirostat_tau=4.5,
        num_ctx=4096,
        repeat_last_n=32,
        repeat_penalty=1.15,
        temperature=0.6,
        seed=77,
        stop=["</s>", "User:"],
        tfs_z=0.95,
        num_predict=2,
        top_p=0.85,
        min_p=0.05,
        top_k=33,
    )
    with OllamaServer("one two three four") as upstream:
        *deltas, usage = items(OllamaChatProvider(base_url=upstream.url, timeout=5).stream(_request(params=params)))
        body = upstream.requests[-1]["json"]

    assert body["options"] == {
        "mirostat": 1,
        "mirostat_eta": 0.2,
        "mirostat_tau": 4.5,
        "num_ctx": 4096,
        "repeat_last_n": 32,
        "repeat_penalty": 1.15,
        "temperature": 0.6,
        "seed": 77,
        "stop": ["</s>", "User:"],
        "tfs_z": 0.95,
        "num_predict": 2,
        "top_p": 0.85,
        "min_p": 0.05,
        "top_k": 33,
    }
    for name in ("temperature", "top_k", "stop", "mirostat"):
        assert name not in body  # parameters travel under options, never at the top level
    assert deltas == ["one ", "two "] and usage.completion_tokens == 2


def test_num_predict_never_exceeds_the_callers_cap():
    assert to_ollama_options(PersonaParams(num_predict=-1), 50) == {"num_predict": 50}
    assert to_ollama_options(PersonaParams(num_predict=900, top_k=5), 50) == {"num_predict": 50, "top_k": 5}
    assert to_ollama_options(None, 8) == {"num_predict": 8}


@pytest.mark.parametrize("status", [500, 401])
def test_upstream_http_error_becomes_provider_error_without_the_key(status):
    with OllamaServer(fail_status=status, fail_message=f"bad token {KEY}") as upstream:
        provider = OllamaChatProvider(base_url=upstream.url, api_key=KEY, timeout=5)
        with pytest.raises(UpstreamHTTPError) as caught:
            items(provider.stream(_request()))
        with pytest.raises(UpstreamHTTPError) as caught_json:
            run(provider.complete(_request()))
        assert upstream.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    for err in (caught.value, caught_json.value):
        assert err.status == 502 and err.upstream_status == status and f"HTTP {status}" in str(err)
        assert "bad token" in str(err) and KEY not in str(err)


def test_unknown_model_is_a_404_cause():
    with OllamaServer(models=["llama3"]) as upstream, pytest.raises(UpstreamHTTPError) as caught:
        items(OllamaChatProvider(base_url=upstream.url, timeout=5).stream(_request()))
    assert caught.value.upstream_status == 404 and "not found" in str(caught.value)


def test_timeout_before_first_byte_is_provider_timeout():
    with OllamaServer(delay_before_first_byte=30) as upstream:
        provider = OllamaChatProvider(base_url=upstream.url, timeout=0.3)
        with pytest.raises(ProviderTimeout) as caught:
            items(provider.stream(_request()))
        with pytest.raises(ProviderTimeout):
            run(provider.complete(_request()))
    assert caught.value.status == 504


def test_stall_mid_stream_is_provider_timeout():
    with OllamaServer("a b c", chunk_delay=30) as upstream:
        received: list[str] = []
        with pytest.raises(ProviderTimeout):
            items(OllamaChatProvider(base_url=upstream.url, timeout=5).stream(_request(timeout=0.5)), received)
    assert received == ["a "]


def test_error_line_mid_stream_is_provider_error():
    with OllamaServer("a b c d", fail_after_chunks=1, fail_message="runner crashed") as upstream:
        received: list[str] = []
        with pytest.raises(ProviderError) as caught:
            items(OllamaChatProvider(base_url=upstream.url, timeout=5).stream(_request()), received)
    assert received == ["a "] and "runner crashed" in str(caught.value)


def test_unreachable_host_is_provider_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProviderError) as caught:
        items(OllamaChatProvider(base_url=f"http://127.0.0.1:{port}", timeout=2).stream(_request()))
    assert "cannot reach upstream" in str(caught.value) and not isinstance(caught.value, ProviderTimeout)


def test_closing_the_stream_mid_way_disconnects_from_upstream():
    with OllamaServer("tock", chunks=500, chunk_delay=0.02) as upstream:
        stream = OllamaChatProvider(base_url=upstream.url, timeout=5).stream(_request())

        async def read_one_then_close() -> None:
            assert await first_text(stream) == "tock "
            await stream.aclose()

        run(read_one_then_close())
        assert upstream.disconnected.wait(10)
        assert upstream.streams_completed == 0


def test_list_models():
    with OllamaServer(models=["llama3:8b", "qwen2:0.5b"]) as upstream:
        assert run(OllamaChatProvider(base_url=upstream.url, timeout=5).list_models()) == ["llama3:8b", "qwen2:0.5b"]
