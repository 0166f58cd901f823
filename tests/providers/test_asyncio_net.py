"""The plain-asyncio sockets under the upstream clients (backend/providers/asyncio_net.py),
driven through httpx as the gateway drives them, against raw-socket servers that misbehave
on purpose: silence, a close mid-body, a close of an idle kept-alive connection, big bodies
both ways (flow control), nobody listening."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from backend.providers import upstream
from backend.providers.asyncio_net import READ_HIGH_WATER, AsyncioBackend
from tests.outbound.servers import closed_port

Handler = Callable[[socket.socket], None]


@contextmanager
def raw_server(handle: Handler) -> Iterator[str]:
    """Accepts connections on 127.0.0.1 and runs `handle(conn)` for each in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_run, args=(handle, conn), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _run(handle: Handler, conn: socket.socket) -> None:
    with conn:
        try:
            handle(conn)
        except OSError:
            pass


def read_request(conn: socket.socket) -> bytes:
    """The request's head and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def run(coro_fn: Callable[[httpx.AsyncClient], object], *, timeout: float = 5.0):
    async def main():
        async with httpx.AsyncClient(transport=upstream.async_transport(), timeout=timeout) as client:
            return await coro_fn(client)

    return asyncio.run(main())


def test_a_silent_upstream_is_a_read_timeout():
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        conn.recv(1)  # holds the connection open until the client gives up

    with raw_server(silent) as url, pytest.raises(httpx.ReadTimeout):
        run(lambda client: client.get(url), timeout=0.3)


def test_a_close_mid_body_is_an_error_not_a_short_answer():
    def half(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)

    with raw_server(half) as url, pytest.raises(httpx.RemoteProtocolError):
        run(lambda client: client.get(url))


def test_big_bodies_cross_both_ways_intact():
    size = 8 * READ_HIGH_WATER  # well past the read buffer's pause point and a socket buffer
    sent = bytes(range(256)) * (size // 256)

    def echo(conn: socket.socket) -> None:
        request = read_request(conn)
        body = request.partition(b"\r\n\r\n")[2]
        conn.sendall(answer(body[::-1]))

    async def exchange(client: httpx.AsyncClient) -> bytes:
        response = await client.post(url, content=sent)
        return response.content

    with raw_server(echo) as url:
        assert run(exchange) == sent[::-1]


def test_a_kept_alive_connection_is_reused_and_one_the_upstream_closed_is_not():
    peers: list[int] = []

    def keep_alive_twice_then_close(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[1])
        for _ in range(2):
            read_request(conn)
            conn.sendall(answer(b"ok"))
        # then closes: the pooled connection goes stale while idle

    async def three(client: httpx.AsyncClient) -> list[str]:
        texts = []
        for _ in range(2):
            texts.append((await client.get(url)).text)
        for _ in range(50):  # the close reaches the client's socket
            await asyncio.sleep(0.02)
            if len(peers) == 1 and _closed_seen(client):
                break
        texts.append((await client.get(url)).text)
        return texts

    with raw_server(keep_alive_twice_then_close) as url:
        assert run(three) == ["ok", "ok", "ok"]
    assert len(peers) == 2  # two requests on the first connection, a new one after its close


def _closed_seen(client: httpx.AsyncClient) -> bool:
    idle = client._transport._idle  # type: ignore[attr-defined]
    return any(connection.stream.get_extra_info("is_readable") for kept in idle.values() for connection in kept)


def test_nobody_listening_is_a_connect_error():
    with pytest.raises(httpx.ConnectError):
        run(lambda client: client.get(f"http://127.0.0.1:{closed_port()}"))


def test_a_close_the_loop_has_not_delivered_yet_still_marks_the_connection_stale():
    """Under load the event loop may not have run since the upstream closed an idle
    connection; the pool must still see it as closed before it sends on it."""
    closed = threading.Event()

    def close_at_once(conn: socket.socket) -> None:
        closed.set()

    with raw_server(close_at_once) as url:
        port = int(url.rsplit(":", 1)[1])

        async def check() -> bool:
            stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            closed.wait(5)
            # block this thread (the loop does not run) until the kernel has the close
            poller = select.poll()
            poller.register(stream.get_extra_info("socket").fileno(), select.POLLIN)
            poller.poll(5000)
            stale = stream.get_extra_info("is_readable")
            await stream.aclose()
            return stale

        assert asyncio.run(check()) is True


def read_chunked_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """A request whose body is chunked: (head, the body decoded)."""
    data = b""
    while b"0\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return head, body


def test_an_answer_that_ends_with_the_connection_is_read_whole_and_its_connection_not_kept():
    peers: list[int] = []

    def until_close(conn: socket.socket) -> None:
        peers.append(conn.getpeername()[1])
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"y" * 70_000)

    async def twice(client: httpx.AsyncClient) -> list[int]:
        return [len((await client.get(url)).content) for _ in range(2)]

    with raw_server(until_close) as url:
        assert run(twice) == [70_000, 70_000]
    assert len(peers) == 2


def test_a_streamed_request_body_goes_chunked_and_an_interim_answer_is_skipped():
    seen: dict[str, bytes] = {}

    def continue_then_echo(conn: socket.socket) -> None:
        seen["head"], seen["body"] = read_chunked_request(conn)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"got %d" % len(seen["body"])))

    async def parts():
        for i in range(5):
            yield b"part %d;" % i

    async def send(client: httpx.AsyncClient) -> tuple[int, str]:
        response = await client.post(url, content=parts())
        return response.status_code, response.text

    with raw_server(continue_then_echo) as url:
        assert run(send) == (200, "got 35")
    assert seen["body"] == b"part 0;part 1;part 2;part 3;part 4;"
    assert b"transfer-encoding: chunked" in seen["head"].lower()


def test_a_kept_alive_connection_closed_as_the_request_goes_out_is_tried_once_more_on_a_new_one():
    """The upstream closes an idle connection just as a request is sent on it (no check
    before reuse can see that coming): the request goes again on a fresh connection; a fresh
    connection closed without an answer is an error, not a loop."""
    served: list[str] = []

    def once_then_drop(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(answer(b"first"))
        served.append("first")
        if read_request(conn):  # the next request arrives ... and the upstream closes without a word
            served.append("dropped")

    async def two(client: httpx.AsyncClient) -> list[str]:
        return [(await client.post(url, content=b"q")).text for _ in range(2)]

    with raw_server(once_then_drop) as url:
        assert run(two) == ["first", "first"]  # the second went out twice: dropped, then answered
    assert served == ["first", "dropped", "first"]

    def always_drop(conn: socket.socket) -> None:
        read_request(conn)

    with raw_server(always_drop) as url, pytest.raises(httpx.RemoteProtocolError):
        run(lambda client: client.post(url, content=b"q"))
