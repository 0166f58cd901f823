"""The seed-003 actors (alice, bob, admin) for the client-compatibility tests."""

from tests.seed003.conftest import Actor, admin, alice, bob  # noqa: F401 - pytest fixtures
