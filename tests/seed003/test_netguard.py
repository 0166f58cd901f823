"""The SSRF guard: which URLs the server may call on a user's behalf."""

from __future__ import annotations

import socket

import pytest

from backend.providers.netguard import UnsafeURL, check_url
from tests.factories import make_settings


@pytest.fixture
def guard(tmp_path):
    def make(**overrides):
        return make_settings("sqlite:///unused.db", tmp_path, **overrides)

    return make


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254:80/",
        "http://2852039166/",  # 169.254.169.254 as one number
        "http://0xa9fea9fe/",  # ... in hex
        "http://[::ffff:169.254.169.254]/",  # ... IPv4-mapped IPv6
        "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/",
        "http://169.254.1.1/",  # link-local
        "http://10.0.0.5/v1",
        "http://172.16.3.4:8080/v1",
        "http://192.168.1.10/v1",
        "http://[fc00::1]/v1",  # unique local IPv6
        "http://0.0.0.0:11434/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://224.0.0.1/",
    ],
)
def test_internal_addresses_are_refused(guard, url):
    with pytest.raises(UnsafeURL) as info:
        check_url(url, guard())
    assert info.value.status == 400
    with pytest.raises(UnsafeURL):
        check_url(url, guard(), on_save=True)  # an address refuses on save as well


@pytest.mark.parametrize(
    "url, why",
    [
        ("ftp://example.com/v1", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("gopher://127.0.0.1:6379/", "http(s)"),
        ("example.com/v1", "http(s)"),
        ("", "http(s)"),
        ("http:///v1", "no host"),
        ("https://user:secret@api.example.com/v1", "user name or password"),
        ("http://[::1/v1", "not a valid URL"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused(guard, url, why):
    with pytest.raises(UnsafeURL) as info:
        check_url(url, guard(), on_save=True)
    assert why in info.value.message
    assert "secret" not in info.value.message


def test_loopback_is_allowed_by_default_and_can_be_refused(guard):
    for url in ("http://127.0.0.1:11434", "http://localhost:11434/api/tags", "http://[::1]:8000/v1"):
        assert check_url(url, guard()).host
    strict = guard(allow_loopback=False)
    for url in ("http://127.0.0.1:11434", "http://127.1.2.3/", "http://[::1]:8000/v1"):
        with pytest.raises(UnsafeURL, match="loopback"):
            check_url(url, strict)
    # a host NAME that resolves to loopback is caught by resolving it
    with pytest.raises(UnsafeURL, match="loopback"):
        check_url("http://localhost:11434/", strict)
    # ... unless an admin allowed that host by name or address
    assert check_url("http://localhost:11434/", guard(allow_loopback=False, allowed_private_hosts="localhost"))
    assert check_url("http://127.0.0.1:1/", guard(allow_loopback=False, allowed_private_hosts="127.0.0.0/8"))


def test_admin_allowlist_opens_private_hosts_but_never_metadata(guard):
    allowed = guard(allowed_private_hosts="10.0.0.5, 192.168.0.0/16 ,gpu-box.lan,169.254.169.254")
    assert check_url("http://10.0.0.5:11434/", allowed).addresses == ("10.0.0.5",)
    assert check_url("http://192.168.7.7/v1", allowed)
    with pytest.raises(UnsafeURL):
        check_url("http://10.0.0.6/", allowed)
    with pytest.raises(UnsafeURL, match="metadata"):
        check_url("http://169.254.169.254/", allowed)


@pytest.fixture
def dns(monkeypatch):
    """Names that resolve to the given addresses (the machine's resolver answers the rest)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in names[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def test_a_host_name_resolving_to_a_private_address_is_refused(guard, dns):
    dns["intranet.example"] = ["10.1.2.3"]
    dns["rebind.example"] = ["8.8.8.8", "169.254.169.254"]  # one bad address among good ones
    dns["v6.example"] = ["::ffff:192.168.0.1"]
    with pytest.raises(UnsafeURL, match="private"):
        check_url("http://intranet.example:8080/v1", guard())
    with pytest.raises(UnsafeURL, match="metadata"):
        check_url("https://rebind.example/v1", guard())
    with pytest.raises(UnsafeURL, match="private"):
        check_url("https://v6.example/v1", guard())
    assert check_url("http://intranet.example:8080/v1", guard(allowed_private_hosts="intranet.example"))
    assert check_url("http://intranet.example:8080/v1", guard(allowed_private_hosts="10.1.0.0/16"))
    with pytest.raises(UnsafeURL, match="metadata"):
        check_url("https://rebind.example/v1", guard(allowed_private_hosts="rebind.example"))


def test_unresolvable_names_pass_on_save_and_fail_before_a_call(guard):
    url = "https://api.unresolvable-meteor-test.invalid/v1/chat/completions"
    saved = check_url(url, guard(), on_save=True)
    assert saved.addresses == () and saved.port == 443
    with pytest.raises(UnsafeURL, match="cannot resolve"):
        check_url(url, guard())


def test_public_addresses_pass(guard):
    assert check_url("https://8.8.8.8/v1", guard()).port == 443
    assert check_url("http://[2001:4860:4860::8888]:8080/v1", guard()).port == 8080
