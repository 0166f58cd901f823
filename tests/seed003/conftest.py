"""Fixtures for the seed-003 tests: two users and an admin, each with Bearer headers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.factories import admin_headers, make_admin, make_user, user_headers


@dataclass
class Actor:
    id: str
    name: str
    headers: dict[str, str]


@pytest.fixture
def alice(client, maker, settings) -> Actor:
    user = make_user(maker, settings, username="alice")
    return Actor(user.id, user.username, user_headers(client, user.username))


@pytest.fixture
def bob(client, maker, settings) -> Actor:
    user = make_user(maker, settings, username="bob")
    return Actor(user.id, user.username, user_headers(client, user.username))


@pytest.fixture
def admin(client, maker, settings) -> Actor:
    a = make_admin(maker, settings, name="root")
    return Actor(str(a.id), a.name, admin_headers(client, a.name))
