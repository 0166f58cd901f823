"""HTTP/1.1 to the upstreams on httptools' C parser: the transport under every upstream client.

httpx's own transport goes through httpcore, whose HTTP/1.1 is h11 (pure Python) under
several layers of async generators and locks: per streamed chat at c = 1 that was about a
fifth of the event loop's samples (py-spy), opening the request and then once per upstream
chunk. Here a request is written in one piece, the answer is parsed by llhttp (httptools, the
parser uvicorn already serves with), and its body pieces go straight to httpx's response.

What it does, and no more (it is the upstreams' client, not a general one):
- keep-alive connections per origin, the last used first; one idle for longer than
  `keepalive_expiry`, or one whose peer closed it (asked as `asyncio_net` answers), is not
  reused; at most `max_keepalive` idle per origin;
- TLS with the given context, the URL's host as the server name;
- httpx's timeouts (connect, read, write) and its exceptions, so callers see what they saw;
- request bodies as bytes or a stream (chunked when httpx says so); answers with a
  Content-Length, chunked, or until the peer closes; an answer cut short is an error, never
  a short body. No proxy, no HTTP/2, no unix socket (upstreams need none; the SSRF guard
  pins addresses through the network backend it is given).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httptools
import httpx

from backend.providers.asyncio_net import AsyncioBackend, default_ssl_context

READ_BYTES = 65536

# httpcore's errors (raised by the network backend) as the httpx errors callers expect
_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


def _as_httpx(exc: Exception, request: httpx.Request) -> Exception:
    for kind, mapped in _ERRORS.items():
        if isinstance(exc, kind):
            error = mapped(str(exc) or kind.__name__, request=request)
            error.__cause__ = exc
            return error
    return exc


def http_transport(
    backend: httpcore.AsyncNetworkBackend | None = None, **httpx_transport_kwargs: Any
) -> httpx.AsyncBaseTransport:
    """The transport (keep-alive pool included) under an upstream client, over `backend`, by
    default plain `AsyncioBackend` sockets. Takes httpx.AsyncHTTPTransport's `limits`,
    `retries` (0: the gateway decides) and `verify` (an SSLContext); anything else it does
    not do is refused."""
    limits = httpx_transport_kwargs.pop("limits", None) or httpx.Limits()
    verify = httpx_transport_kwargs.pop("verify", None)
    if httpx_transport_kwargs.pop("retries", 0):
        raise TypeError("upstream transports never retry: the gateway decides")
    if httpx_transport_kwargs:
        raise TypeError(f"the upstream transport does not take {', '.join(sorted(httpx_transport_kwargs))}")
    if verify is not None and not isinstance(verify, ssl.SSLContext):
        raise TypeError("verify= takes an ssl.SSLContext here")
    kept = limits.max_keepalive_connections
    return LeanTransport(
        backend or AsyncioBackend(),
        ssl_context=verify,
        max_keepalive=128 if kept is None else kept,
        keepalive_expiry=30.0 if limits.keepalive_expiry is None else limits.keepalive_expiry,
    )


class _Answer:
    """httptools' callbacks for one response: its status line, headers and body pieces."""

    __slots__ = ("parser", "reason", "headers", "head_done", "keep_alive", "body", "complete", "extra")

    def __init__(self) -> None:
        self.parser: Any = None
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.keep_alive = False
        self.body: list[bytes] = []
        self.complete = False
        self.extra = False  # bytes after the end of the answer: the connection is not reused

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # asked now: llhttp forgets once the answer ends

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    """One kept-alive upstream connection: an `asyncio_net` stream and when it was last used."""

    __slots__ = ("stream", "idle_since")

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream
        self.idle_since = 0.0

    def stale(self, now: float, expiry: float) -> bool:
        return now - self.idle_since > expiry or bool(self.stream.get_extra_info("is_readable"))

    async def close(self) -> None:
        try:
            await self.stream.aclose()
        except Exception:  # noqa: BLE001 - closing a broken connection cannot fail the caller
            pass


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend | None = None,
        *,
        ssl_context: Any = None,
        max_keepalive: int = 128,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self._backend = backend or AsyncioBackend()
        self._ssl_context = ssl_context or default_ssl_context()
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"an upstream is reached over http or https, not {url.scheme!r}")
        origin = (url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        pooled = True  # the first try takes a kept-alive connection if there is one
        while True:
            try:
                connection = await self._take(origin) if pooled else None
                if connection is None:
                    pooled, connection = False, await self._connect(origin, timeouts)
            except Exception as exc:
                raise _as_httpx(exc, request) from None
            parser_target = _Answer()
            parser = parser_target.parser = httptools.HttpResponseParser(parser_target)
            try:
                await self._send(connection, request, timeouts.get("write"))
                await self._read_head(connection, parser, parser_target, timeouts.get("read"))
                break
            except BaseException as exc:
                await connection.close()
                if pooled and isinstance(exc, _Unanswered) and isinstance(request.stream, httpx.ByteStream):
                    pooled = False  # a kept-alive connection the upstream had closed: once more on a new one
                    continue
                if isinstance(exc, Exception):
                    raise _as_httpx(exc, request) from None
                raise
        if request.headers.get("connection", "").lower() == "close":
            parser_target.keep_alive = False
        body = _Body(self, origin, connection, parser, parser_target, timeouts.get("read"), request)
        return httpx.Response(
            parser.get_status_code(),
            headers=parser_target.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": parser_target.reason},
        )

    async def _take(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.stale(now, self._expiry):
                return connection
            await connection.close()
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int], timeouts: dict[str, float | None]) -> _Connection:
        scheme, host, port = origin
        name = host.decode("ascii")
        stream = await self._backend.connect_tcp(name, port, timeout=timeouts.get("connect"))
        if scheme == b"https":
            stream = await stream.start_tls(self._ssl_context, server_hostname=name, timeout=timeouts.get("connect"))
        return _Connection(stream)

    @staticmethod
    async def _send(connection: _Connection, request: httpx.Request, timeout: float | None) -> None:
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
        head += [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
        head.append(b"\r\n")
        stream = connection.stream
        if isinstance(request.stream, httpx.ByteStream):  # bytes, the usual case: one write
            try:
                await stream.write(b"".join(head) + request.content, timeout)
            except httpcore.WriteError as exc:  # closed before we wrote: nothing reached the upstream
                raise _Unanswered(str(exc)) from exc
            return
        await stream.write(b"".join(head), timeout)
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        async for part in request.stream:  # type: ignore[union-attr]
            if part:
                await stream.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part, timeout)
        if chunked:
            await stream.write(b"0\r\n\r\n", timeout)

    @staticmethod
    async def _read_head(connection: _Connection, parser: Any, answer: _Answer, timeout: float | None) -> None:
        heard = False
        while True:
            try:
                data = await connection.stream.read(READ_BYTES, timeout)
            except httpcore.ReadError as exc:
                if heard:
                    raise
                raise _Unanswered(str(exc)) from exc
            if not data:
                if heard:
                    raise httpcore.RemoteProtocolError("the upstream closed the connection mid-answer")
                raise _Unanswered("the upstream closed the connection without answering")
            heard = True
            _feed(parser, data)
            if answer.head_done:
                if 100 <= parser.get_status_code() < 200 and parser.get_status_code() != 101:
                    # an interim answer (100 Continue): the real one follows on a fresh parse
                    answer.__init__()  # type: ignore[misc]
                    answer.parser = parser
                    continue
                return

    def _release(self, origin: tuple[bytes, bytes, int], connection: _Connection) -> bool:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._max_keepalive:
            return False
        connection.idle_since = time.monotonic()
        idle.append(connection)
        return True

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.close()


class _Unanswered(httpcore.RemoteProtocolError):
    """The connection closed before a byte of the answer: on a kept-alive connection, the
    upstream closed it while it was idle (a race no check before reuse can fully close)."""


def _feed(parser: Any, data: bytes) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        raise httpcore.RemoteProtocolError("the upstream switched protocols") from None
    except httptools.HttpParserError as exc:
        raise httpcore.RemoteProtocolError(f"the upstream's answer is not HTTP/1.1: {exc}") from None


class _Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; the connection goes back to the pool once it is read
    to its end (and closes if the body is left unread)."""

    def __init__(
        self,
        pool: LeanTransport,
        origin: tuple[bytes, bytes, int],
        connection: _Connection,
        parser: Any,
        answer: _Answer,
        timeout: float | None,
        request: httpx.Request,
    ) -> None:
        self._pool, self._origin, self._connection = pool, origin, connection
        self._parser, self._answer, self._timeout, self._request = parser, answer, timeout, request
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        answer, stream = self._answer, self._connection.stream
        try:
            while True:
                if answer.body:
                    pieces, answer.body = answer.body, []
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if answer.complete:
                    break
                data = await stream.read(READ_BYTES, self._timeout)
                if not data:  # the end of an answer framed by the close; else one cut short
                    if answer.keep_alive or not self._reads_until_close():
                        raise httpcore.RemoteProtocolError("the upstream closed the connection mid-answer")
                    break
                _feed(self._parser, data)
        except Exception as exc:
            await self._finish()
            raise _as_httpx(exc, self._request) from None
        await self._finish()

    def _reads_until_close(self) -> bool:
        """An answer with neither a Content-Length nor chunked framing ends when the peer closes."""
        names = {name.lower() for name, _ in self._answer.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    async def _finish(self) -> None:
        """Back to the pool when the whole answer was read and the connection may carry
        another (an answer ended by the close, cut short or left unread never is)."""
        if self._done:
            return
        self._done = True
        answer = self._answer
        keep = answer.complete and not answer.extra and answer.keep_alive
        if not (keep and self._pool._release(self._origin, self._connection)):
            await self._connection.close()

    async def aclose(self) -> None:
        await self._finish()
