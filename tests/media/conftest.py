"""Fixtures for the media tests: local engine servers and connection rows pointing at them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.media.fakes import FAKE_KEYS, FAKE_OPENAI_KEY, OCR_PATH, IatServer, ocr_app, openai_app, serve_asgi
from tests.media.helpers import add_connection


@pytest.fixture
def iat_server() -> Iterator[IatServer]:
    with IatServer() as server:
        yield server


@pytest.fixture
def ocr_server() -> Iterator[tuple[str, object]]:
    app = ocr_app()
    with serve_asgi(app) as base:
        yield base + OCR_PATH, app


@pytest.fixture
def openai_server() -> Iterator[tuple[str, object]]:
    app = openai_app()
    with serve_asgi(app) as base:
        yield base + "/v1", app


@pytest.fixture
def connections(maker, settings, iat_server, ocr_server, openai_server) -> dict:
    """One connection per online protocol, named after it, over the local servers."""
    add_connection(maker, settings, name="xf-iat", protocol="iflytek-iat", url=iat_server.url, secret=FAKE_KEYS.pack())
    add_connection(maker, settings, name="xf-ocr", protocol="iflytek-ocr", url=ocr_server[0], secret=FAKE_KEYS.pack())
    for name, protocol, version in (("oa-audio", "openai-audio", "whisper-1"), ("oa-vision", "openai-vision", None)):
        add_connection(
            maker, settings, name=name, protocol=protocol, url=openai_server[0], secret=FAKE_OPENAI_KEY, version=version
        )
    return {"iat": iat_server, "ocr": ocr_server[1], "openai": openai_server[1]}
