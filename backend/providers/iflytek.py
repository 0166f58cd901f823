"""iFlytek's signed-URL scheme (HMAC-SHA256 over host, date and request line), shared by
Spark chat, IAT dictation and OCR."""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from urllib.parse import urlencode, urlparse


def signature(api_secret: str, host: str, date: str, method: str, path: str) -> str:
    text = f"host: {host}\ndate: {date}\n{method} {path} HTTP/1.1"
    digest = hmac.new(api_secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def authorization(api_key: str, sig: str) -> str:
    raw = f'api_key="{api_key}", algorithm="hmac-sha256", headers="host date request-line", signature="{sig}"'
    return base64.b64encode(raw.encode()).decode()


def signed_url(url: str, api_key: str, api_secret: str, method: str = "GET", date: str | None = None) -> str:
    """`url` with `?authorization=…&date=…&host=…` as iFlytek expects."""
    parts = urlparse(url)
    date = date or formatdate(usegmt=True)
    sig = signature(api_secret, parts.netloc, date, method, parts.path)
    query = urlencode({"authorization": authorization(api_key, sig), "date": date, "host": parts.netloc})
    return f"{url}?{query}"


def verify(query: dict[str, str], api_key: str, api_secret: str, method: str, path: str) -> bool:
    """Server side of the scheme, for the local protocol servers the tests start."""
    try:
        auth = base64.b64decode(query["authorization"]).decode()
        expected = authorization(api_key, signature(api_secret, query["host"], query["date"], method, path))
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(auth, base64.b64decode(expected).decode())
