"""The Spark provider against a real local websocket server that verifies iFlytek's signature."""

from __future__ import annotations

import json
import socket
from email.utils import formatdate

import pytest
import websocket

from backend.providers.base import ChatRequest, ProviderError, ProviderTimeout, Usage
from backend.providers.iflytek import signed_url
from backend.providers.params import PersonaParams, to_spark_chat
from backend.providers.registry import chat_provider
from backend.providers.spark_chat import SparkChatProvider, SparkError, pack_secret, parse_secret
from backend.providers.tokens import count_text_tokens, count_tokens
from backend.providers.upstream import UpstreamHTTPError
from tests.fakes.spark_server import SparkServer
from tests.providers.aio import first_text, items, run

MESSAGES = [
    {"role": "system", "content": "你是一位老师。"},
    {"role": "user", "content": "What is rain"},
]


def _request(**kw) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, model="generalv3.5", **kw)


def test_stream_reads_frames_until_status_2_and_takes_sparks_usage():
    with SparkServer("Rain is water falling", prompt_tokens=13) as upstream:
        provider = chat_provider("spark", base_url=upstream.url, api_key=upstream.secret, timeout=5)
        events = items(provider.stream(_request()))
        sent = upstream.requests[-1]

    assert events == ["Rain ", "is ", "water ", "falling", Usage(prompt_tokens=13, completion_tokens=4)]
    assert upstream.rejected == []
    body = sent["json"]
    assert body["header"]["app_id"] == "spark-app"
    assert body["parameter"]["chat"] == {"domain": "generalv3.5", "max_tokens": 512}
    assert body["payload"]["message"]["text"] == MESSAGES
    # the signed URL carried iFlytek's three query parameters
    assert set(sent["query"]) == {"authorization", "date", "host"}


def test_complete_collects_the_frames():
    with SparkServer("你好 世界", prompt_tokens=5) as upstream:
        text, usage = run(
            SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).complete(_request())
        )
    assert text == "你好 世界" and usage == Usage(5, 2)


def test_missing_usage_is_counted_offline():
    with SparkServer("no usage here", include_usage=False) as upstream:
        *deltas, usage = items(
            SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).stream(_request())
        )
    assert usage == Usage(count_tokens(MESSAGES), count_text_tokens("".join(deltas))) and usage.completion_tokens > 0


def test_json_packed_secret_works_too():
    with SparkServer("ok") as upstream:
        secret = json.dumps({"app_id": "spark-app", "api_key": "spark-key", "api_secret": "spark-secret"})
        assert items(SparkChatProvider(base_url=upstream.url, secret=secret, timeout=5).stream(_request()))[0] == "ok"
    assert parse_secret(pack_secret("a", "k", "s")).api_secret == "s"


def test_persona_parameters_translated_to_sparks_chat_parameters():
    params = PersonaParams(temperature=1.6, top_k=40, num_predict=3, top_p=0.5, seed=1, mirostat=1, stop=["x"])
    with SparkServer("a b c d e") as upstream:
        *deltas, usage = items(
            SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).stream(
                _request(params=params, max_tokens=100)
            )
        )
        chat = upstream.requests[-1]["json"]["parameter"]["chat"]
    assert chat == {"domain": "generalv3.5", "temperature": 1.0, "max_tokens": 3, "top_k": 6}
    assert deltas == ["a ", "b ", "c "] and usage.completion_tokens == 3
    assert to_spark_chat(PersonaParams(temperature=0, top_k=0), 10) == {"temperature": 0.01, "max_tokens": 10}
    assert to_spark_chat(PersonaParams(temperature=0.4, top_k=3), 10, domain="4.0Ultra") == {
        "domain": "4.0Ultra",
        "temperature": 0.4,
        "max_tokens": 10,
        "top_k": 3,
    }


def test_bad_signature_is_refused_with_401_and_no_secret_in_the_message():
    with SparkServer() as upstream:
        wrong = "spark-app:spark-key:the-wrong-secret-value"
        with pytest.raises(UpstreamHTTPError) as caught:
            items(SparkChatProvider(base_url=upstream.url, secret=wrong, timeout=5).stream(_request()))
        assert upstream.rejected == ["signature"] and upstream.requests == []
    assert caught.value.upstream_status == 401 and "HMAC signature cannot be verified" in str(caught.value)
    assert "the-wrong-secret-value" not in str(caught.value) and "spark-key" not in str(caught.value)


def test_the_fake_refuses_a_stale_date_and_a_tampered_host():
    with SparkServer() as upstream:
        stale = signed_url(upstream.url, "spark-key", "spark-secret", date=formatdate(0, usegmt=True))
        with pytest.raises(websocket.WebSocketBadStatusException) as caught:
            websocket.create_connection(stale, timeout=5)
        assert caught.value.status_code == 403
        tampered = signed_url(upstream.url, "spark-key", "spark-secret").replace("date=", "date=Mon%2C+")
        with pytest.raises(websocket.WebSocketBadStatusException) as caught:
            websocket.create_connection(tampered, timeout=5)
        assert caught.value.status_code == 401
        assert upstream.rejected == ["date", "signature"]


def test_wrong_app_id_gets_the_iflytek_error_frame():
    with SparkServer() as upstream, pytest.raises(SparkError) as caught:
        provider = SparkChatProvider(base_url=upstream.url, secret="other-app:spark-key:spark-secret", timeout=5)
        items(provider.stream(_request()))
    assert caught.value.upstream_code == 10313 and caught.value.status == 502


def test_error_frame_mid_stream_is_provider_error_after_the_delivered_deltas():
    with SparkServer("a b c d", fail_after_chunks=2, fail_code=10013, fail_message="content not allowed") as upstream:
        received: list[str] = []
        with pytest.raises(SparkError) as caught:
            items(
                SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).stream(_request()), received
            )
    assert received == ["a ", "b "]
    assert caught.value.upstream_code == 10013 and "content not allowed" in str(caught.value)


def test_upstream_error_frame_before_any_text():
    with SparkServer(fail_code=11200, fail_message="licence expired") as upstream, pytest.raises(SparkError) as caught:
        run(SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).complete(_request()))
    assert "11200" in str(caught.value) and "licence expired" in str(caught.value)


def test_timeout_waiting_for_frames_is_provider_timeout():
    with SparkServer(delay_before_first_byte=30) as upstream, pytest.raises(ProviderTimeout) as caught:
        items(SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=0.3).stream(_request()))
    assert caught.value.status == 504


def test_stall_mid_stream_is_provider_timeout():
    with SparkServer("a b c", chunk_delay=30) as upstream:
        received: list[str] = []
        with pytest.raises(ProviderTimeout):
            items(
                SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).stream(
                    _request(timeout=0.4)
                ),
                received,
            )
    assert received == ["a "]


def test_unreachable_and_malformed_secret_are_provider_errors():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProviderError) as caught:
        items(
            SparkChatProvider(base_url=f"ws://127.0.0.1:{port}/v3.5/chat", secret="a:b:c", timeout=2).stream(_request())
        )
    assert "cannot reach upstream" in str(caught.value)
    with pytest.raises(ProviderError) as caught:
        items(
            SparkChatProvider(base_url=f"ws://127.0.0.1:{port}/v3.5/chat", secret="only-one-part", timeout=2).stream(
                _request()
            )
        )
    assert "app_id:api_key:api_secret" in str(caught.value) and "only-one-part" not in str(caught.value)


def test_closing_the_stream_mid_way_disconnects_from_upstream():
    with SparkServer("tick", chunks=500, chunk_delay=0.02) as upstream:
        stream = SparkChatProvider(base_url=upstream.url, secret=upstream.secret, timeout=5).stream(_request())

        async def read_one_then_close() -> None:
            assert await first_text(stream) == "tick "
            await stream.aclose()

        run(read_one_then_close())
        assert upstream.disconnected.wait(10)
        assert upstream.streams_completed == 0
