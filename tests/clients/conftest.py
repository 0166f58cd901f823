"""Fixtures for the original clients: a serve-api deployment for the desktop client
(tests/clients/stack.py starts it); the seed-003 accounts come from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clients.stack import Meteor, start_meteor
from tests.servers import stop


@pytest.fixture(scope="module")
def legacy_meteor(tmp_path_factory) -> Iterator[Meteor]:
    """serve-api as a deployment for the desktop client: METEOR_LEGACY_UUID_AUTH=true."""
    meteor, process = start_meteor(tmp_path_factory.mktemp("meteor-legacy"), METEOR_LEGACY_UUID_AUTH="true")
    try:
        yield meteor
    finally:
        stop(process)
