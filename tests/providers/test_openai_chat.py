"""The OpenAI-compatible provider against a real local SSE server."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backend.providers.base import REQUEST_SENT, ChatRequest, ProviderError, ProviderTimeout, Usage, collect
from backend.providers.openai_chat import OpenAIChatProvider
from backend.providers.params import PersonaParams
from backend.providers.registry import chat_provider
from backend.providers.tokens import count_text_tokens, count_tokens
from backend.providers.upstream import UpstreamHTTPError
from tests.fakes.openai_server import OpenAIServer
from tests.providers.aio import first_text, items, run

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the class"},
]
KEY = "sk-meteor-test-secret-0123456789"


def _request(**kw) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, model="fake-model", **kw)


def test_stream_yields_deltas_then_upstream_usage():
    with OpenAIServer("Hello dear class of twenty", prompt_tokens=17) as upstream:
        provider = chat_provider("openai", base_url=upstream.url, api_key=KEY, timeout=5)
        events = items(provider.stream(_request()))
        sent = upstream.requests[-1]

    assert "".join(events[:-1]) == "".join(upstream.deltas) == "Hello dear class of twenty"
    assert events[-1] == Usage(prompt_tokens=17, completion_tokens=5)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["json"]["stream"] is True and sent["json"]["stream_options"] == {"include_usage": True}
    assert sent["json"]["messages"] == MESSAGES and sent["json"]["model"] == "fake-model"


def test_deltas_of_one_read_go_on_as_one_and_a_slow_stream_piece_by_piece():
    words = ["Hello", " dear", " class", " of", " twenty"]
    body = b"".join(_event({"choices": [{"index": 0, "delta": {"content": w}}]}) for w in words) + b"data: [DONE]\n\n"
    server = RawSSEServer(body, piece=len(body))  # every event in one write: one read, whatever the load
    try:
        at_once = items(OpenAIChatProvider(base_url=server.url, timeout=5).stream(_request()))
    finally:
        server.close()
    with OpenAIServer("Hello dear class of twenty", chunk_delay=0.05) as upstream:
        slow = items(OpenAIChatProvider(base_url=upstream.url, timeout=5).stream(_request()))
        deltas = upstream.deltas
    assert at_once[:-1] == ["Hello dear class of twenty"]
    assert slow[:-1] == deltas and len(deltas) == 5


def test_non_stream_returns_text_and_usage():
    with OpenAIServer("One whole answer", prompt_tokens=9) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=5)
        text, usage = run(provider.complete(_request()))
        assert upstream.requests[-1]["json"].get("stream") in (None, False)
    assert text == "One whole answer"
    assert usage == Usage(prompt_tokens=9, completion_tokens=3)


def test_missing_usage_is_counted_with_the_offline_tokenizer():
    with OpenAIServer("Counting tokens without any help from upstream", include_usage=False) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=5)
        *deltas, usage = items(provider.stream(_request()))
        text, usage_json = run(provider.complete(_request()))

    assert "".join(deltas) == text == "Counting tokens without any help from upstream"
    expected = Usage(prompt_tokens=count_tokens(MESSAGES), completion_tokens=count_text_tokens(text))
    assert usage == usage_json == expected
    assert expected.prompt_tokens > 10 and expected.completion_tokens >= 7


def test_persona_parameters_mapped_to_openai_fields_and_the_rest_dropped():
    params = PersonaParams(
        temperature=0.3,
        top_p=0.8,
        seed=42,
        stop=["a", "b", "c", "d", "e"],
        top_k=20,
        min_p=0.1,
        mirostat=2,
        mirostat_eta=0.2,
        mirostat_tau=4.0,
        repeat_penalty=1.3,
        repeat_last_n=32,
        num_ctx=4096,
        tfs_z=0.9,
        num_predict=7,
    )
    with OpenAIServer("one two three four five six seven eight nine ten") as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=5)
        *deltas, usage = items(provider.stream(_request(params=params, max_tokens=100)))
        body = upstream.requests[-1]["json"]

    assert body["temperature"] == 0.3 and body["top_p"] == 0.8 and body["seed"] == 42
    assert body["stop"] == ["a", "b", "c", "d"]
    assert body["max_tokens"] == 7  # num_predict below the caller's cap
    for dropped in ("top_k", "min_p", "mirostat", "mirostat_eta", "mirostat_tau", "repeat_penalty"):
        assert dropped not in body
    for dropped in ("repeat_last_n", "num_ctx", "tfs_z", "num_predict", "frequency_penalty", "presence_penalty"):
        assert dropped not in body
    assert "".join(deltas) == "".join(upstream.deltas[:7]) and usage.completion_tokens == 7


def test_caller_cap_wins_over_a_larger_num_predict():
    with OpenAIServer("a b c d e f") as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=5)
        items(provider.stream(_request(params=PersonaParams(num_predict=-1), max_tokens=3)))
        assert upstream.requests[-1]["json"]["max_tokens"] == 3
        items(provider.stream(_request(params=PersonaParams(num_predict=500), max_tokens=4)))
        assert upstream.requests[-1]["json"]["max_tokens"] == 4


@pytest.mark.parametrize("status", [500, 401, 429])
def test_upstream_http_error_becomes_provider_error_without_the_key(status):
    leaky = f"Incorrect API key provided: {KEY}. Authorization: Bearer {KEY}"
    with OpenAIServer(fail_status=status, fail_message=leaky) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=5)
        with pytest.raises(UpstreamHTTPError) as caught:
            items(provider.stream(_request()))
        with pytest.raises(UpstreamHTTPError) as caught_json:
            run(provider.complete(_request()))

    for err in (caught.value, caught_json.value):
        assert err.status == 502 and err.upstream_status == status
        assert f"HTTP {status}" in str(err) and "Incorrect API key provided" in str(err)
        assert KEY not in str(err) and "0123456789" not in str(err)
    assert KEY not in repr(provider)


def test_timeout_before_first_byte_is_provider_timeout():
    with OpenAIServer(delay_before_first_byte=30) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=0.3)
        with pytest.raises(ProviderTimeout) as caught:
            items(provider.stream(_request()))
    assert caught.value.status == 504 and "0.3 s" in str(caught.value)


def test_request_timeout_tighter_than_connection_timeout_applies():
    with OpenAIServer(delay_before_first_byte=30) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=60)
        with pytest.raises(ProviderTimeout):
            run(provider.complete(_request(timeout=0.3)))


def test_stall_mid_stream_is_provider_timeout_after_the_delivered_deltas():
    with OpenAIServer("a b c", chunk_delay=30) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=0.5)
        received: list[str] = []
        with pytest.raises(ProviderTimeout):
            items(provider.stream(_request()), received)
    assert received == ["a "]


def test_error_event_mid_stream_is_provider_error():
    with OpenAIServer("a b c d e", fail_after_chunks=2, fail_message="model crashed") as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=5)
        received: list[str] = []
        with pytest.raises(ProviderError) as caught:
            items(provider.stream(_request()), received)
    assert "".join(received) == "a b "  # what came before the error
    assert "model crashed" in str(caught.value) and caught.value.status == 502


def test_unreachable_upstream_is_provider_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIChatProvider(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=2)
    with pytest.raises(ProviderError) as caught:
        run(collect(provider.stream(_request())))
    assert not isinstance(caught.value, ProviderTimeout)
    assert "cannot reach upstream" in str(caught.value) and KEY not in str(caught.value)


def test_closing_the_stream_mid_way_disconnects_from_upstream():
    with OpenAIServer("tick", chunks=500, chunk_delay=0.02) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, timeout=5)
        stream = provider.stream(_request())

        async def read_one_then_close() -> None:
            assert await first_text(stream) == "tick "
            await stream.aclose()

        run(read_one_then_close())
        assert upstream.disconnected.wait(10)
        assert upstream.streams_completed == 0


def test_list_models():
    with OpenAIServer(models=["m-one", "m-two"], api_key=KEY) as upstream:
        assert run(OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=5).list_models()) == [
            "m-one",
            "m-two",
        ]
        with pytest.raises(UpstreamHTTPError) as caught:
            run(OpenAIChatProvider(base_url=upstream.url, api_key="sk-wrong-key-1234", timeout=5).list_models())
    assert caught.value.upstream_status == 401


class RawSSEServer:
    """An upstream that writes a hand-made SSE body in small pieces over a keep-alive
    connection: CRLF line ends, a comment, `data:` with and without its space, one event's
    data over two lines, events split across writes. Counts the connections it accepted."""

    def __init__(self, body: bytes, piece: int = 7, gzipped: bool = False) -> None:
        self.body, self.piece, self.accepted = (gzip.compress(body) if gzipped else body), piece, 0
        self.encoding = b"Content-Encoding: gzip\r\n" if gzipped else b""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        try:
            while self._answer_one(conn, reader):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def _answer_one(self, conn: socket.socket, reader) -> bool:
        length = None
        while True:
            line = reader.readline()
            if not line:
                return False
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        reader.read(length or 0)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            + self.encoding
            + b"Connection: keep-alive\r\n\r\n"
        )
        for i in range(0, len(self.body), self.piece):
            part = self.body[i : i + self.piece]
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        conn.sendall(b"0\r\n\r\n")
        return True

    def close(self) -> None:
        self._sock.close()


def _event(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"


def test_hand_made_sse_is_decoded_whatever_its_line_ends_and_splits_and_the_connection_is_reused():
    delta = lambda text: {"choices": [{"index": 0, "delta": {"content": text}}]}  # noqa: E731
    body = (
        b": a comment the client must skip\r\n\r\n"
        + _event(delta("Hel"))
        + b'data:{"choices": [{"index": 0, "delta": {"content": "lo"}}]}\n\n'  # no space, LF only
        + b'data: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": " class"}}]}\r\n\r\n'  # two data lines
        + _event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
        + b"data: [DONE]\r\n\r\n"
    )
    server = RawSSEServer(body)
    try:
        provider = OpenAIChatProvider(base_url=server.url, timeout=5)

        async def twice() -> list[list]:  # one event loop: one pooled client
            return [[e async for e in provider.stream(_request()) if e is not REQUEST_SENT] for _ in range(2)]

        first, second = run(twice())
    finally:
        server.close()
    # how the pieces group depends on what each network read holds; their text and the usage do not
    for events in (first, second):
        assert "".join(events[:-1]) == "Hello class" and events[-1] == Usage(prompt_tokens=4, completion_tokens=3)
    assert server.accepted == 1  # what followed [DONE] was read, so the keep-alive connection was reused


def test_a_gzipped_event_stream_is_decoded():
    # the provider reads the transport's bytes itself unless the body is content-encoded
    words = ["Compressed", " events", " still", " arrive"]
    body = b"".join(_event({"choices": [{"index": 0, "delta": {"content": w}}]}) for w in words) + b"data: [DONE]\n\n"
    server = RawSSEServer(body, piece=9, gzipped=True)
    try:
        events = items(OpenAIChatProvider(base_url=server.url, timeout=5).stream(_request()))
    finally:
        server.close()
    assert "".join(e for e in events if isinstance(e, str)) == "Compressed events still arrive"


def test_an_error_object_in_a_hand_made_stream_is_a_provider_error_after_the_deltas():
    body = (
        _event({"choices": [{"index": 0, "delta": {"content": "partial"}}]})
        + _event({"error": {"message": "the upstream ran out of room", "type": "server_error"}})
        + b"data: [DONE]\r\n\r\n"
    )
    server = RawSSEServer(body, piece=5)
    try:
        provider = OpenAIChatProvider(base_url=server.url, timeout=5)
        seen: list = []

        async def consume() -> None:
            async for event in provider.stream(_request()):
                seen.append(event)

        with pytest.raises(ProviderError, match="ran out of room"):
            run(consume())
    finally:
        server.close()
    assert "partial" in seen


@contextmanager
def answering(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[OpenAIChatProvider]:
    """A provider whose upstream reads every POST's body, then lets `answer(handler)` reply."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            answer(self)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield OpenAIChatProvider(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key=KEY, timeout=5)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "extra_headers", "body"),
    [
        (302, [("Location", "http://169.254.169.254/latest/")], b""),
        (500, [], b'{"error": {"message": "overloaded"}}'),  # then spaces until the client stops reading
    ],
)
def test_a_redirect_or_a_huge_error_answer_to_a_stream_is_an_upstream_http_error(status, extra_headers, body):
    """No redirect is followed, and an error answer is read only as far as its message."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in extra_headers:
            handler.send_header(name, value)
        endless = status == 500
        handler.send_header("Content-Length", str(2**40 if endless else len(body)))
        handler.end_headers()
        deadline = time.monotonic() + 20  # a client that read it all would fail on the short body
        try:
            handler.wfile.write(body)
            while endless and time.monotonic() < deadline:
                handler.wfile.write(b" " * 65536)
        except OSError:  # the client stopped reading: that is the point
            pass

    with answering(answer) as provider, pytest.raises(UpstreamHTTPError) as caught:
        items(provider.stream(_request()))
    assert caught.value.upstream_status == status and f"HTTP {status}" in str(caught.value)
    if status == 500:
        assert "overloaded" in str(caught.value) and len(str(caught.value)) < 1000


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<html><body>Sign in to the campus proxy</body></html>"),  # the SDK hands back a str
        ("application/json", b'{"choices": "none today"}'),
        ("application/json", b'{"choices": [{"message": {"content": 42}}]}'),
        ("application/json", b"<html>not json at all</html>"),
    ],
)
def test_a_whole_answer_that_is_not_a_chat_completion_is_a_provider_error(content_type, body):
    """A 200 that is no chat completion (a captive portal's page, a wrong shape) is the
    upstream's fault, said as such — not an AttributeError out of the provider."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with answering(answer) as provider, pytest.raises(ProviderError) as caught:
        run(provider.complete(_request()))
    assert "upstream answer not understood" in str(caught.value) and KEY not in str(caught.value)


def test_a_stream_request_answered_with_one_whole_completion_is_relayed_as_one_piece():
    with OpenAIServer("All of it at once", prompt_tokens=6, ignore_stream=True) as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=5)
        events = items(provider.stream(_request()))
        assert upstream.requests[-1]["json"]["stream"] is True
        completion = len(upstream.deltas)  # the upstream's own usage, not a count of ours
    assert events == ["All of it at once", Usage(prompt_tokens=6, completion_tokens=completion)]


def test_a_stream_request_answered_with_a_web_page_is_a_provider_error_not_an_empty_answer():
    with OpenAIServer(html_page="<html><body>Sign in to the campus network</body></html>") as upstream:
        provider = OpenAIChatProvider(base_url=upstream.url, api_key=KEY, timeout=5)
        seen: list = []

        async def consume() -> None:
            async for event in provider.stream(_request()):
                seen.append(event)

        with pytest.raises(ProviderError, match="not understood: the answer is not an event stream .text/html"):
            run(consume())
    assert seen == [REQUEST_SENT]
