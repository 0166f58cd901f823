"""The sockets under every upstream HTTP client (`lean_http`), on plain asyncio, behind
httpcore's network-stream interface (which the SSRF guard's backend wraps too).

httpcore's own async backend goes through anyio, which for every read of a streamed answer
enters a cancel scope (`fail_after`) and yields to the loop once more before receiving
(anyio's checkpoint) — per upstream chunk, under 200 open streams, about a tenth of the
gateway's CPU (py-spy). Here a connection is an `asyncio.Protocol` whose bytes wait in a
buffer: a read returns them at once, or waits on one future with one timer for its timeout.
Flow control both ways: reading pauses above READ_HIGH_WATER buffered bytes, a write waits
while the transport is paused.
"""

from __future__ import annotations

import asyncio
import functools
import select
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

READ_HIGH_WATER = 256 * 1024
POLL_INTERVAL = 0.1  # seconds between two asks of one idle socket whether its peer closed
QUIET_BEFORE_POLL = 1.0  # seconds a peer is silent before its socket is asked at all


class _Connection(asyncio.Protocol):
    """The receiving half: what the transport delivered, its end, and who waits for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.polled_at = -POLL_INTERVAL  # when the socket was last asked whether the peer closed
        self.heard_at = -QUIET_BEFORE_POLL  # when the peer last sent something (never: long ago)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.heard_at = time.monotonic()
        if len(self.buffer) > READ_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too: HTTP/1.1 has no half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        _wake(waiter)

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        _wake(waiter)

    async def wait(self, kind: str, timeout: float | None, timeout_error: type[Exception]) -> None:
        """Wait until data (kind "read") or write room ("drain") arrives, at most `timeout` s."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if kind == "read":
            self._read_waiter = waiter
        else:
            self._drain_waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if waiter.result() is _EXPIRED:
            raise timeout_error(f"no {'data' if kind == 'read' else 'room to write'} within {timeout:g} s")


_EXPIRED: Any = object()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(_EXPIRED)


def _socket_readable(sock: Any) -> bool:
    """Whether the kernel holds something to read (data or the peer's close); no socket: yes."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS over TCP) connection for httpcore."""

    def __init__(self, transport: asyncio.Transport, connection: _Connection) -> None:
        self._transport = transport
        self._connection = connection

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        connection = self._connection
        if not connection.buffer and not connection.eof:
            await connection.wait("read", timeout, httpcore.ReadTimeout)
        buffer = connection.buffer
        if not buffer:
            if connection.error is not None:
                raise httpcore.ReadError(str(connection.error) or type(connection.error).__name__)
            return b""  # the peer closed: httpcore reads that as the end
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if connection.reading_paused and len(buffer) <= READ_HIGH_WATER // 2:
            connection.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        connection = self._connection
        if connection.eof or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        if connection.writing_paused:
            await connection.wait("drain", timeout, httpcore.WriteTimeout)
            if connection.eof:
                raise httpcore.WriteError("the connection closed while writing")

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._connection, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._connection.transport = transport  # type: ignore[assignment]
        return AsyncioStream(transport, self._connection)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle kept-alive connection with something to read was closed or broken
            connection = self._connection
            if connection.buffer or connection.eof:
                return True
            # Under load the loop may not have delivered the peer's close yet, so the socket is
            # asked too — only once the peer has been quiet for QUIET_BEFORE_POLL (servers close
            # kept-alive connections after seconds of silence), and at most every POLL_INTERVAL:
            # a poll on every reuse profiled at a tenth of the loop at c = 200 (under httpcore,
            # which asked every idle connection of its pool; lean_http asks the one it takes).
            now = time.monotonic()
            if now - connection.heard_at < QUIET_BEFORE_POLL or now - connection.polled_at < POLL_INTERVAL:
                return False
            connection.polled_at = now
            return _socket_readable(self._transport.get_extra_info("socket"))
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    _Connection, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"could not connect within {timeout:g} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, connection)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("upstreams are reached over TCP")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default (certifi) context, made once: each transport made its own, loading the
    CA bundle every time (~50 ms a pool shard, on an upstream's first request)."""
    return httpx.create_ssl_context()
