"""Where the server may send a request on a user's behalf (the SSRF guard).

An online connection's `aiApi` is a URL the server itself will call, so it must not be
aimed at the server's own network: a cloud metadata address (169.254.169.254, Alibaba's
100.100.100.200, ...), a private range, or link-local. Rules:

- only `http` and `https` (and `ws(s)` for iFlytek), with a host, and no user:password in
  the URL (keys go in aiToken);
- the host name is resolved and EVERY address it resolves to is checked, so names and
  numeric tricks (`2852039166`, `0x7f.1`, `::ffff:169.254.169.254`) are caught;
- cloud metadata addresses and host names are refused always;
- loopback and every private, link-local, shared, reserved or unspecified address are for
  ADMINS' connections only (`allow_private=True`: a shared connection, or an admin's
  unsaved test). A user's own connection reaches public addresses only, whatever the
  settings below say, except the exact `host:port` upstreams a deployer lists in
  `METEOR_USER_UPSTREAMS` (a campus model server on a private network) — a port is
  required, so a user can never scan a host's other ports;
- with `allow_private`, loopback is allowed when `Settings.allow_loopback` (default on, for
  a local Ollama), and any other private address only when the host name, the address, or
  a network containing it is in `METEOR_ALLOWED_PRIVATE_HOSTS`.

A host name that does not resolve is accepted when a connection is saved (`on_save`) —
it points nowhere today — and refused when a request is about to be made.

Checking a URL and then letting a client resolve the name again is not enough: the name
may resolve elsewhere the second time (DNS rebinding), and an allowed upstream may answer
a redirect to a forbidden address. So every outbound client of the server

- never follows redirects, and
- connects through `guarded_transport()` (httpx) or `resolve_checked()` (websockets): the
  host is resolved ONCE per new TCP connection, every address is checked with the rules
  above, and the socket is opened to exactly that checked IP, while the Host header and
  the TLS server name (SNI, certificate check) stay the original host name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Literal, overload
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from backend.config import Settings
from backend.errors import ServiceError
from backend.providers.asyncio_net import AsyncioBackend
from backend.providers.lean_http import http_transport

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Tencent
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal", "instance-data"}
)
SCHEMES = ("http", "https", "ws", "wss")  # ws(s): iFlytek Spark and IAT
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the low 32 bits are an IPv4 address
METADATA = "a cloud metadata address"


class UnsafeURL(ServiceError):
    """The URL may not be called by the server (400 in every envelope)."""

    def __init__(self, message: str) -> None:
        super().__init__("APP_QUERY_METHOD_ERROR", message, 400)


@dataclass(frozen=True)
class CheckedURL:
    url: str
    host: str
    port: int
    addresses: tuple[str, ...]  # empty when the name did not resolve (only with on_save)


def _allowlist(settings: Settings) -> tuple[set[str], list[Network]]:
    names: set[str] = set()
    networks: list[Network] = []
    for entry in settings.private_host_allowlist:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _kind(address: Address) -> str | None:
    """What non-public kind of address this is, or None for a public (global unicast) one."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private address"
    return None


def _user_upstream(host: str, address: Address, port: int, settings: Settings) -> bool:
    """Whether `host` (or `address`) at `port` is one of METEOR_USER_UPSTREAMS."""
    listed = settings.user_upstream_set
    return bool(listed) and (f"{host}:{port}" in listed or f"{address}:{port}" in listed)


def _refusal(
    address: Address,
    settings: Settings,
    networks: list[Network],
    *,
    allow_private: bool,
    name_allowed: bool,
    user_listed: bool = False,
) -> str | None:
    """Why the server may not connect to `address`, or None when it may."""
    address = _unmapped(address)
    if address in METADATA_ADDRESSES:
        return METADATA
    kind = _kind(address)
    if kind is None:
        return None
    if not allow_private:
        return None if user_listed else kind
    if name_allowed or any(address in net for net in networks if net.version == address.version):
        return None
    if address.is_loopback and settings.allow_loopback:
        return None
    return kind


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal resolves to itself). The one place
    the guard resolves names: tests replace it to play a rebinding DNS server."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[Address] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        addr = ipaddress.ip_address(raw)
        if addr not in seen:
            seen.append(addr)
    return seen


def _refuse(host: str, reason: str, allow_private: bool) -> UnsafeURL:
    if reason == METADATA:
        return UnsafeURL("aiApi may not point at a cloud metadata service")
    if not allow_private:
        return UnsafeURL(
            f"aiApi host {host!r} resolves to {reason}; only connections an admin manages "
            "may reach loopback or private addresses"
        )
    return UnsafeURL(
        f"aiApi host {host!r} resolves to {reason}; an admin must allow it in METEOR_ALLOWED_PRIVATE_HOSTS"
    )


def _check_name(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        raise UnsafeURL("aiApi has no host")
    if host in METADATA_HOSTS or host.endswith(".metadata.google.internal"):
        raise UnsafeURL("aiApi may not point at a cloud metadata service")
    return host


def _check_addresses(
    host: str, port: int, addresses: list[Address], settings: Settings, *, allow_private: bool
) -> None:
    names, networks = _allowlist(settings)
    name_allowed = host in names
    for address in addresses:
        listed = not allow_private and _user_upstream(host, _unmapped(address), port, settings)
        reason = _refusal(
            address, settings, networks, allow_private=allow_private, name_allowed=name_allowed, user_listed=listed
        )
        if reason is not None:
            raise _refuse(host, reason, allow_private)


def checked_addresses(host: str, port: int, settings: Settings, *, allow_private: bool) -> list[str]:
    """Resolve `host` once and check EVERY address (UnsafeURL when one is refused or the
    name does not resolve); the addresses to connect to, in the resolver's order."""
    host = _check_name(host)
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError, OSError):
        raise UnsafeURL(f"cannot resolve the host {host!r}") from None
    if not addresses:
        raise UnsafeURL(f"cannot resolve the host {host!r}")
    _check_addresses(host, port, addresses, settings, allow_private=allow_private)
    return [str(a) for a in addresses]


def resolve_checked(host: str, port: int, settings: Settings, *, allow_private: bool) -> str:
    """The checked IP to open a socket to for `host` (for clients that connect by IP and keep
    the name for TLS, e.g. websockets with `sock=` / `server_hostname=`). UnsafeURL (400)
    when any address of the name is refused."""
    return checked_addresses(host, port, settings, allow_private=allow_private)[0]


def check_url(url: str, settings: Settings, *, on_save: bool = False, allow_private: bool = True) -> CheckedURL:
    """Refuse (UnsafeURL, 400) a URL the server must not call; otherwise describe it.

    `on_save=True` accepts a host name that does not resolve right now; a call-time check
    (the default) refuses it. `allow_private=False` (a user's own connection) refuses every
    loopback and private address whatever the settings say."""
    if not isinstance(url, str) or not url.strip():
        raise UnsafeURL("aiApi must be an http(s) URL")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("aiApi is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise UnsafeURL("aiApi must be an http(s) URL (or ws(s) for iFlytek)")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("aiApi must not carry a user name or password; put the key in aiToken")
    host = _check_name(parts.hostname or "")
    port = port or (443 if parts.scheme.lower() in ("https", "wss") else 80)
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError, OSError):
        if on_save:
            return CheckedURL(url, host, port, ())
        raise UnsafeURL(f"cannot resolve the host {host!r}") from None
    _check_addresses(host, port, addresses, settings, allow_private=allow_private)
    return CheckedURL(url, host, port, tuple(str(a) for a in addresses))


# --- the guarded transport ------------------------------------------------------------------


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network backend with every TCP connect pinned to a checked address."""

    def __init__(self, inner: httpcore.NetworkBackend, settings: Settings, allow_private: bool) -> None:
        self.inner = inner
        self.settings = settings
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        ips = checked_addresses(host, port, self.settings, allow_private=self.allow_private)
        error: Exception | None = None
        for ip in ips:  # every one was checked; try them in order like create_connection does
            try:
                return self.inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None):
        raise UnsafeURL("outbound calls go over TCP only")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The asynchronous twin of _GuardedBackend (the name is resolved in a worker thread), over
    plain-asyncio sockets (`asyncio_net`)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, settings: Settings, allow_private: bool) -> None:
        self.inner = inner
        self.settings = settings
        self.allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        ips = await anyio.to_thread.run_sync(
            lambda: checked_addresses(host, port, self.settings, allow_private=self.allow_private)
        )
        error: Exception | None = None
        for ip in ips:
            try:
                return await self.inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None):
        raise UnsafeURL("outbound calls go over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@overload
def guarded_transport(
    settings: Settings, *, allow_private: bool, asynchronous: Literal[False], **httpx_transport_kwargs: Any
) -> httpx.HTTPTransport: ...
@overload
def guarded_transport(
    settings: Settings, *, allow_private: bool, asynchronous: Literal[True], **httpx_transport_kwargs: Any
) -> httpx.AsyncBaseTransport: ...
@overload
def guarded_transport(
    settings: Settings, *, allow_private: bool, asynchronous: bool, **httpx_transport_kwargs: Any
) -> httpx.HTTPTransport | httpx.AsyncBaseTransport: ...
def guarded_transport(
    settings: Settings, *, allow_private: bool, asynchronous: bool, **httpx_transport_kwargs: Any
) -> httpx.HTTPTransport | httpx.AsyncBaseTransport:
    """An httpx transport (keep-alive pool included) whose every new TCP connection goes to
    an address checked by the guard, resolved once for that connection; Host and TLS name
    stay the URL's host. Refused addresses raise UnsafeURL out of the request (the openai
    SDK wraps it: look at `APIConnectionError.__cause__`). Use it with
    `follow_redirects=False` and `trust_env=False` on the client.

    `httpx_transport_kwargs` go to `httpx.HTTPTransport` (verify, limits, retries, http2, ...)
    or, asynchronous, to `lean_http.http_transport` (limits, verify); a proxy or a unix
    socket would bypass the pinning and is refused."""
    for key in ("proxy", "uds"):
        if httpx_transport_kwargs.get(key) is not None:
            raise TypeError(f"guarded_transport does not support {key}=")
    if asynchronous:
        return http_transport(_AsyncGuardedBackend(AsyncioBackend(), settings, allow_private), **httpx_transport_kwargs)
    transport = httpx.HTTPTransport(**httpx_transport_kwargs)
    pool = transport._pool
    pool._network_backend = _GuardedBackend(pool._network_backend, settings, allow_private)
    return transport


@dataclass(frozen=True)
class Guard:
    """What an outbound client needs to pin its connections: the settings and whether the
    connection may reach loopback / private addresses (`connections.reaches_private`)."""

    settings: Settings
    allow_private: bool

    def transport(self, *, asynchronous: bool = False, **httpx_transport_kwargs: Any):
        return guarded_transport(
            self.settings, allow_private=self.allow_private, asynchronous=asynchronous, **httpx_transport_kwargs
        )

    def address(self, host: str, port: int) -> str:
        return resolve_checked(host, port, self.settings, allow_private=self.allow_private)


def unsafe_cause(exc: BaseException) -> UnsafeURL | None:
    """The UnsafeURL behind an exception a client library wrapped (the openai SDK turns
    every transport error into APIConnectionError), or None."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, UnsafeURL):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None
