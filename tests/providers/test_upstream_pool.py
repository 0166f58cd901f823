"""The upstream transport's pools (upstream.async_transport): a request goes to the pool with
the fewest requests in flight, and counts until its response is closed."""

from __future__ import annotations

import asyncio

import httpx

from backend.providers import upstream
from tests.fakes.openai_server import OpenAIServer


def test_sequential_requests_stay_on_one_pool_and_concurrent_ones_spread():
    with OpenAIServer(reply="a b c", chunks=3, chunk_delay=0.05) as fake:
        transport = upstream.async_transport()
        in_flight = transport._in_flight

        async def stream_once(client: httpx.AsyncClient, seen: list[list[int]]) -> None:
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with client.stream("POST", f"{fake.url}/chat/completions", json=body) as response:
                seen.append(list(in_flight))
                async for _ in response.aiter_bytes():
                    pass

        async def run() -> tuple[list[list[int]], list[list[int]]]:
            async with httpx.AsyncClient(transport=transport) as client:
                sequential: list[list[int]] = []
                for _ in range(3):
                    await stream_once(client, sequential)
                assert in_flight == [0] * upstream.POOL_SHARDS
                concurrent: list[list[int]] = []
                await asyncio.gather(*(stream_once(client, concurrent) for _ in range(upstream.POOL_SHARDS)))
                return sequential, concurrent

        sequential, concurrent = asyncio.run(run())
    assert sequential == [[1] + [0] * (upstream.POOL_SHARDS - 1)] * 3
    assert max(max(counts) for counts in concurrent) == 1  # one stream per pool at most
    assert in_flight == [0] * upstream.POOL_SHARDS
    assert fake.streams_completed == 3 + upstream.POOL_SHARDS
