"""Real local servers and a controllable resolver for the outbound-call tests.

`Listener` is a small HTTP(S) server on a given 127.x address (Linux answers the whole
127.0.0.0/8 on loopback, so 127.0.0.1 and 127.0.0.2 are two distinct hosts). It records
every request (path, Host header, the client's port — one per TCP connection — and, over
TLS, the SNI name) and answers either JSON or a redirect.

`Resolver` replaces `socket.getaddrinfo` (what `netguard.resolve` and the plain clients
use) for the names it is given; each name has a list of answers that it cycles through,
one per lookup — a rebinding DNS server.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        listener = self.server.listener
        sni = getattr(self.connection, "meteor_sni", None)
        with listener.lock:
            listener.hits.append(
                {"path": self.path, "host": self.headers.get("Host"), "client_port": self.client_address[1], "sni": sni}
            )
        if listener.redirect_to is not None:
            self.send_response(listener.redirect_status)
            self.send_header("Location", listener.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = json.dumps(listener.payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer  # noqa: N815 - http.server naming


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    listener: Listener


class Listener:
    """An HTTP (or, with `tls`, HTTPS) server on `host`:`port` (0 = a free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        payload: Any = None,
        redirect_to: str | None = None,
        redirect_status: int = 307,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.payload = {"data": [{"id": "secret-internal-model"}], "object": "list"} if payload is None else payload
        self.redirect_to = redirect_to
        self.redirect_status = redirect_status
        self.hits: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.listener = self
        if tls is not None:
            tls.sni_callback = _remember_sni
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, host: str | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{host or self.host}:{self.port}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remember_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
    sock.meteor_sni = name  # type: ignore[union-attr]


def free_port_on(*hosts: str) -> int:
    """A port that is free on every one of `hosts` (so two servers can share it)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Resolver:
    """`socket.getaddrinfo` with scripted answers for some names; `lookups` counts them."""

    def __init__(self, real) -> None:
        self.real = real
        self.answers: dict[str, list[list[str]]] = {}
        self.turn: dict[str, int] = {}
        self.lookups: dict[str, int] = {}
        self.lock = threading.Lock()

    def set(self, name: str, *answers: list[str]) -> None:
        """`name` answers answers[0], then answers[1], ... cycling."""
        with self.lock:
            self.answers[name] = [list(a) for a in answers]
            self.turn[name] = 0
            self.lookups[name] = 0

    def __call__(self, host, port, *args, **kwargs):
        key = host.decode() if isinstance(host, bytes) else host
        with self.lock:
            scripted = self.answers.get(key)
            if scripted is not None:
                answer = scripted[self.turn[key] % len(scripted)]
                self.turn[key] += 1
                self.lookups[key] += 1
        if scripted is None:
            return self.real(host, port, *args, **kwargs)
        port = int(port or 0)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]


def self_signed(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for `name`, and a client
    context that trusts only it (hostname checking on)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / f"{name}.crt"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client
