"""The chat gateway's side of finding 9: a model over a user's own connection carries
`allow_private=False`, and opening its provider refuses loopback before any call."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from backend.catalog import registry as model_registry
from backend.providers.netguard import UnsafeURL
from db.models import ModelAiOnline
from tests.factories import make_user
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model


def test_a_users_own_connection_cannot_reach_loopback_through_chat(maker, settings):
    owner = make_user(maker, settings)
    with OpenAIServer() as upstream:
        add_online_model(maker, settings, url=upstream.url, name="shared-local")
        add_online_model(maker, settings, url=upstream.url, name="own-local", user_id=owner.id)
        with maker.begin() as s:  # the second connection is the user's own
            s.execute(
                update(ModelAiOnline).where(ModelAiOnline.ai_name == "conn-own-local").values(created_by=owner.id)
            )
        with maker() as s:
            shared = model_registry.resolve(s, settings, name="shared-local", user_id=owner.id)
            own = model_registry.resolve(s, settings, name="own-local", user_id=owner.id)
        assert (shared.allow_private, own.allow_private) == (True, False)
        assert model_registry.open_provider(shared, settings) is not None  # an admin's local engine: fine
        with pytest.raises(UnsafeURL, match="only connections an admin manages"):
            model_registry.open_provider(own, settings)
        assert upstream.requests == []


def test_the_pinned_transport_of_a_users_connection_refuses_private_addresses_too(maker, settings):
    """The URL check and the transport that pins each connection use the same rule, so a
    user's connection whose host later resolves to loopback is refused at connect time."""
    import asyncio

    owner = make_user(maker, settings)
    with OpenAIServer() as upstream:
        add_online_model(maker, settings, url=upstream.url, name="own-2", user_id=owner.id)
        with maker.begin() as s:
            s.execute(update(ModelAiOnline).where(ModelAiOnline.ai_name == "conn-own-2").values(created_by=owner.id))
        with maker() as s:
            own = model_registry.resolve(s, settings, name="own-2", user_id=owner.id)
        from backend.providers import registry

        provider = registry.chat_provider(
            "openai", base_url=upstream.url, api_key="k", timeout=5, settings=settings, allow_private=own.allow_private
        )

        async def models() -> None:
            await provider._guard.transport(asynchronous=True).handle_async_request(
                __import__("httpx").Request("GET", upstream.url + "/models")
            )

        with pytest.raises(UnsafeURL):
            asyncio.run(models())
        assert upstream.requests == []
