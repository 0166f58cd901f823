"""The upstream transport's keep-alive pool (upstream.async_transport, backend/providers/lean_http.py):
sequential requests share one connection, concurrent ones each open their own, and every one
goes back to the pool when its answer has been read, to be taken again."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from backend.providers import upstream

CONCURRENT = 8


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    ports: set[int] = set()
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).ports.add(self.client_address[1])
        if self.path == "/slow":
            type(self).release.wait(5)
        body = b"chunk " * 50
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


def test_connections_are_shared_in_sequence_opened_in_parallel_and_all_kept_for_the_next():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    transport = upstream.async_transport()

    async def run() -> tuple[int, int, int]:
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(f"{base}/")).status_code == 200
            sequential = len(_KeepAlive.ports)

            async def slow() -> int:
                return len((await client.get(f"{base}/slow")).content)

            tasks = [asyncio.create_task(slow()) for _ in range(CONCURRENT)]
            while len(_KeepAlive.ports) < CONCURRENT:  # every request is waiting on the server
                await asyncio.sleep(0.01)
            _KeepAlive.release.set()
            assert await asyncio.gather(*tasks) == [300] * CONCURRENT
            parallel = len(_KeepAlive.ports)
            await asyncio.gather(*(client.get(f"{base}/") for _ in range(CONCURRENT)))
            return sequential, parallel, len(_KeepAlive.ports)

    try:
        sequential, parallel, again = asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    assert sequential == 1
    assert parallel == CONCURRENT  # the first connection, back in the pool, served one of them
    assert again == CONCURRENT  # the eight kept connections served the next eight: none new
