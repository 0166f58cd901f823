"""Where the server may send a request on a user's behalf (the SSRF guard).

An online connection's `aiApi` is a URL the server itself will call, so it must not be
aimed at the server's own network: a cloud metadata address (169.254.169.254, Alibaba's
100.100.100.200, ...), a private range, or link-local. Rules:

- only `http` and `https`, with a host, and no user:password in the URL (keys go in aiToken);
- the host name is resolved and EVERY address it resolves to is checked, so names and
  numeric tricks (`2852039166`, `0x7f.1`, `::ffff:169.254.169.254`) are caught;
- cloud metadata addresses and host names are refused always;
- loopback is allowed when `Settings.allow_loopback` (default on, for a local Ollama);
- any other private, link-local, shared, reserved or unspecified address only when the host
  name, the address, or a network containing it is in `METEOR_ALLOWED_PRIVATE_HOSTS`.

A host name that does not resolve is accepted when a connection is saved (`on_save`) —
it points nowhere today — and refused when a request is about to be made.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from backend.config import Settings
from backend.errors import ServiceError

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
    return address


def _refusal(address: Address, settings: Settings, networks: list[Network]) -> str | None:
    """Why the server may not connect to `address`, or None when it may."""
    address = _unmapped(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(address in net for net in networks if net.version == address.version):
        return None
    if address.is_loopback:
        return None if settings.allow_loopback else "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private address"
    return None


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal resolves to itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[Address] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        addr = ipaddress.ip_address(raw)
        if addr not in seen:
            seen.append(addr)
    return seen


def check_url(url: str, settings: Settings, *, on_save: bool = False) -> CheckedURL:
    """Refuse (UnsafeURL, 400) a URL the server must not call; otherwise describe it.

    `on_save=True` accepts a host name that does not resolve right now; a call-time check
    (the default) refuses it."""
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
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURL("aiApi has no host")
    port = port or (443 if parts.scheme.lower() in ("https", "wss") else 80)
    if host in METADATA_HOSTS or host.endswith(".metadata.google.internal"):
        raise UnsafeURL("aiApi may not point at a cloud metadata service")
    names, networks = _allowlist(settings)
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError, OSError):
        if on_save:
            return CheckedURL(url, host, port, ())
        raise UnsafeURL(f"cannot resolve the host {host!r}") from None
    name_allowed = host in names
    for address in addresses:
        reason = _refusal(address, settings, networks)
        if reason is None:
            continue
        if name_allowed and reason != "a cloud metadata address":
            continue
        raise UnsafeURL(
            f"aiApi host {host!r} resolves to {reason}; an admin must allow it in METEOR_ALLOWED_PRIVATE_HOSTS"
            if reason != "a cloud metadata address"
            else "aiApi may not point at a cloud metadata service"
        )
    return CheckedURL(url, host, port, tuple(str(a) for a in addresses))
