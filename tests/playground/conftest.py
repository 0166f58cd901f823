"""The API server with the playground mounted, built once per database (Gradio's Blocks
take seconds to build) and shared by this directory's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.server import create_app
from tests.conftest import make_settings
from tests.gateway.helpers import live_server

_apps: dict[str, object] = {}


@pytest.fixture
def pg_app(db_url, settings, tmp_path_factory):
    """create_app(settings) with the playground, one per database URL."""
    if db_url not in _apps:
        _apps[db_url] = create_app(make_settings(db_url, tmp_path_factory.mktemp("playground")))
    return _apps[db_url]


@pytest.fixture(scope="module")
def pg_server(db_url, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """The app on a real uvicorn server (Gradio's queue runs in its lifespan), per database."""
    settings = make_settings(db_url, tmp_path_factory.mktemp("playground-live"))
    app = create_app(settings)
    with live_server(app) as base:
        yield base, app
