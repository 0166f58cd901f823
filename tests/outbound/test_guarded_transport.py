"""netguard's outbound primitive: `guarded_transport()` and `resolve_checked()`.

Real servers on 127.0.0.1 / 127.0.0.2 stand in for an allowed upstream and a forbidden
internal host. With `allow_loopback=False` and `METEOR_ALLOWED_PRIVATE_HOSTS` naming only
the allowed one, the only difference between the two is what the guard decides."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from backend.providers import netguard
from backend.providers.netguard import UnsafeURL, guarded_transport, resolve_checked
from tests.factories import make_settings
from tests.outbound.servers import Listener, Resolver, free_port_on, self_signed

ALLOWED_IP, FORBIDDEN_IP = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def dns(monkeypatch) -> Resolver:
    resolver = Resolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


@pytest.fixture
def strict(tmp_path):
    """Only 127.0.0.1 (and the name upstream.test) may be reached, and only by admins."""
    return make_settings(
        "sqlite:///unused.db", tmp_path, allow_loopback=False, allowed_private_hosts="127.0.0.1/32,upstream.test"
    )


@pytest.fixture
def pair():
    """Two servers on the same port: the allowed one on 127.0.0.1, the forbidden on 127.0.0.2."""
    port = free_port_on(ALLOWED_IP, FORBIDDEN_IP)
    with (
        Listener(ALLOWED_IP, port, payload={"who": "allowed"}) as allowed,
        Listener(FORBIDDEN_IP, port, payload={"who": "forbidden"}) as forbidden,
    ):
        yield allowed, forbidden


def sync_client(settings, *, allow_private: bool = True, follow_redirects: bool = False, **kwargs) -> httpx.Client:
    transport = guarded_transport(settings, allow_private=allow_private, asynchronous=False, **kwargs)
    return httpx.Client(transport=transport, follow_redirects=follow_redirects, trust_env=False, timeout=5)


def async_client(settings, *, allow_private: bool = True, **kwargs) -> httpx.AsyncClient:
    transport = guarded_transport(settings, allow_private=allow_private, asynchronous=True, **kwargs)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False, timeout=5)


def test_an_allowed_upstream_is_reached_and_keeps_its_connection(strict, pair, dns):
    allowed, forbidden = pair
    dns.set("upstream.test", [ALLOWED_IP])
    with sync_client(strict) as client:
        answers = [client.get(f"http://upstream.test:{allowed.port}/v1/models").json() for _ in range(5)]
    assert answers == [{"who": "allowed"}] * 5
    assert [hit["host"] for hit in allowed.hits] == [f"upstream.test:{allowed.port}"] * 5  # Host header kept
    assert len({hit["client_port"] for hit in allowed.hits}) == 1  # one kept-alive TCP connection
    assert dns.lookups["upstream.test"] == 1  # resolved once, for that connection
    assert forbidden.hits == []


def test_a_redirect_to_a_forbidden_address_is_not_followed(strict, pair, dns):
    allowed, forbidden = pair
    dns.set("upstream.test", [ALLOWED_IP])
    for target in (forbidden.url(), "http://169.254.169.254/latest/meta-data/"):
        allowed.redirect_to = target
        with sync_client(strict) as client:
            response = client.get(f"http://upstream.test:{allowed.port}/v1/models")
        assert response.status_code == 307 and response.headers["location"] == target
        # and even a client that did follow it would be stopped by the transport
        with sync_client(strict, follow_redirects=True) as client, pytest.raises(UnsafeURL):
            client.get(f"http://upstream.test:{allowed.port}/v1/models")
    assert forbidden.hits == []


def test_a_name_resolving_to_a_forbidden_address_is_refused(strict, pair, dns):
    allowed, forbidden = pair
    dns.set("internal.test", [FORBIDDEN_IP])
    dns.set("mixed.test", [ALLOWED_IP, FORBIDDEN_IP])  # one bad address among good ones refuses the name
    dns.set("meta.test", ["169.254.169.254"])
    for name in ("internal.test", "mixed.test", "meta.test"):
        with sync_client(strict) as client, pytest.raises(UnsafeURL) as info:
            client.get(f"http://{name}:{forbidden.port}/")
        assert info.value.status == 400
    with sync_client(strict) as client, pytest.raises(UnsafeURL, match="metadata"):
        client.get("http://metadata.google.internal/computeMetadata/v1/")
    assert forbidden.hits == [] and allowed.hits == []


def test_users_never_reach_loopback_or_private_addresses(tmp_path, pair, dns):
    allowed, _ = pair
    loose = make_settings("sqlite:///unused.db", tmp_path, allow_loopback=True, allowed_private_hosts="127.0.0.0/8")
    with sync_client(loose, allow_private=True) as client:
        assert client.get(allowed.url()).json() == {"who": "allowed"}
    hits = len(allowed.hits)
    dns.set("intranet.test", ["10.1.2.3"])
    for url in (allowed.url(), f"http://localhost:{allowed.port}/", "http://intranet.test/"):
        with sync_client(loose, allow_private=False) as client, pytest.raises(UnsafeURL, match="admin"):
            client.get(url)
    assert len(allowed.hits) == hits


def test_a_listed_user_upstream_is_reachable_at_its_port_only(tmp_path, pair, dns):
    """METEOR_USER_UPSTREAMS opens one exact host:port to users' own connections (a campus
    model server); its other ports and other private addresses stay refused."""
    allowed, forbidden = pair
    dns.set("campus.test", [FORBIDDEN_IP])
    listed = make_settings("sqlite:///unused.db", tmp_path, user_upstreams=f"{ALLOWED_IP}:{allowed.port}")
    with sync_client(listed, allow_private=False) as client:
        assert client.get(allowed.url()).json() == {"who": "allowed"}
    for url in (forbidden.url(), f"http://campus.test:{allowed.port}/", f"http://{ALLOWED_IP}:{allowed.port + 1}/"):
        with sync_client(listed, allow_private=False) as client, pytest.raises(UnsafeURL, match="admin"):
            client.get(url)
    assert forbidden.hits == []


def test_dns_rebinding_never_reaches_the_forbidden_address(strict, pair, dns):
    allowed, forbidden = pair
    url = f"http://rebind.test:{allowed.port}/"

    # the old way (check the URL, then let the client resolve again) is fooled by it
    dns.set("rebind.test", [ALLOWED_IP], [FORBIDDEN_IP])
    netguard.check_url(url, strict)
    with httpx.Client(trust_env=False, timeout=5) as plain:
        assert plain.get(url).json() == {"who": "forbidden"}
    assert len(forbidden.hits) == 1
    forbidden.hits.clear()

    # through the guarded transport: every connection is resolved once and pinned
    dns.set("rebind.test", [ALLOWED_IP], [FORBIDDEN_IP])
    reached, refused = 0, 0
    for _ in range(40):
        with sync_client(strict) as client:
            try:
                assert client.get(url, headers={"Connection": "close"}).json() == {"who": "allowed"}
                reached += 1
            except UnsafeURL:
                refused += 1
    assert forbidden.hits == []
    assert reached == refused == 20  # both answers were really served, half each
    assert dns.lookups["rebind.test"] == 40


def test_dns_rebinding_through_the_async_transport(strict, pair, dns):
    allowed, forbidden = pair
    url = f"http://rebind.test:{allowed.port}/"
    dns.set("rebind.test", [ALLOWED_IP], [FORBIDDEN_IP])

    async def run() -> tuple[int, int, int]:
        reached = refused = 0
        async with async_client(strict) as client:  # one pooled client, like the gateway keeps
            for _ in range(40):
                try:
                    response = await client.get(url, headers={"Connection": "close"})
                    assert response.json() == {"who": "allowed"}
                    reached += 1
                except UnsafeURL:
                    refused += 1
            dns.set("upstream.test", [ALLOWED_IP])
            for _ in range(3):
                await client.get(f"http://upstream.test:{allowed.port}/")
        return reached, refused, len({hit["client_port"] for hit in allowed.hits[-3:]})

    reached, refused, connections = asyncio.run(run())
    assert forbidden.hits == []
    assert reached == refused == 20
    assert connections == 1  # keep-alive works in the async pool too


def test_https_keeps_the_host_name_for_sni_certificate_and_host(strict, dns, tmp_path):
    server_ctx, client_ctx = self_signed(tmp_path, "upstream.test")
    dns.set("upstream.test", [ALLOWED_IP])
    with Listener(ALLOWED_IP, tls=server_ctx, payload={"tls": True}) as secure:
        url = f"https://upstream.test:{secure.port}/v1/models"
        with sync_client(strict, verify=client_ctx) as client:
            assert client.get(url).json() == {"tls": True}

        async def fetch():
            async with async_client(strict, verify=client_ctx) as client:
                return (await client.get(url)).json()

        assert asyncio.run(fetch()) == {"tls": True}
        # the certificate is for the name, not the IP: connecting by IP would fail the check
        with sync_client(strict, verify=client_ctx) as client, pytest.raises(httpx.ConnectError):
            client.get(f"https://{ALLOWED_IP}:{secure.port}/")
    named = [hit for hit in secure.hits if hit["host"] == f"upstream.test:{secure.port}"]
    assert len(named) == 2 and all(hit["sni"] == "upstream.test" for hit in named)


def test_resolve_checked_pins_one_checked_address(strict, dns):
    dns.set("upstream.test", [ALLOWED_IP])
    assert resolve_checked("upstream.test", 443, strict, allow_private=True) == ALLOWED_IP
    with pytest.raises(UnsafeURL, match="admin"):
        resolve_checked("upstream.test", 443, strict, allow_private=False)
    dns.set("rebind.test", [ALLOWED_IP], [FORBIDDEN_IP])
    answers = []
    for _ in range(10):
        try:
            answers.append(resolve_checked("rebind.test", 443, strict, allow_private=True))
        except UnsafeURL:
            answers.append("refused")
    assert answers == [ALLOWED_IP, "refused"] * 5
    with pytest.raises(UnsafeURL, match="metadata"):
        resolve_checked("169.254.169.254", 80, strict, allow_private=True)
    with pytest.raises(UnsafeURL, match="cannot resolve"):
        resolve_checked("nothing.invalid", 80, strict, allow_private=True)


def test_proxies_and_unix_sockets_are_refused(strict):
    with pytest.raises(TypeError):
        guarded_transport(strict, allow_private=True, asynchronous=False, proxy="http://127.0.0.1:3128")
    with pytest.raises(TypeError):
        guarded_transport(strict, allow_private=True, asynchronous=True, uds="/tmp/x.sock")


def test_the_openai_sdk_runs_over_the_guarded_async_transport(strict, dns):
    """What the chat gateway does: AsyncOpenAI with an httpx.AsyncClient on the transport.
    A refusal comes out of the SDK as the UnsafeURL itself (not wrapped)."""
    import openai

    from tests.fakes.openai_server import OpenAIServer

    with OpenAIServer(reply="pinned hello") as upstream:
        dns.set("upstream.test", [ALLOWED_IP])
        dns.set("internal.test", [FORBIDDEN_IP])

        async def run() -> str:
            async with async_client(strict) as http:
                sdk = openai.AsyncOpenAI(
                    base_url=f"http://upstream.test:{upstream.port}/v1", api_key="k", max_retries=0, http_client=http
                )
                completion = await sdk.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "hi"}]
                )
                blocked = openai.AsyncOpenAI(
                    base_url=f"http://internal.test:{upstream.port}/v1", api_key="k", max_retries=0, http_client=http
                )
                with pytest.raises(UnsafeURL):
                    await blocked.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                return completion.choices[0].message.content

        assert asyncio.run(run()) == "pinned hello"
        assert (
            len(upstream.requests) == 1 and upstream.requests[0]["headers"]["host"] == f"upstream.test:{upstream.port}"
        )
