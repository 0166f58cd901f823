"""Per-user API keys for /v1: create (the key is shown once), list (prefix only), revoke.

Users manage their own keys under `/user/api_keys` (Bearer user token); admins manage
anyone's under `/admin/api_keys`. Seed-000 envelope.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.accounts import apikeys
from backend.accounts import service as accounts
from backend.accounts.identity import actor_of
from backend.api import envelope
from backend.api.bounds import IdPath
from backend.api.deps import CurrentAdmin, CurrentUser, SessionDep
from backend.api.schemas import seed000
from backend.api.schemas.seed000 import AdminApiKeyCreate, ApiKeyCreate
from db.models import User

router = APIRouter(tags=["api keys"], responses=seed000.errors(401, 403, 404, 405, 413, 422))


def _owner(session: SessionDep, user_id: str | None, username: str | None) -> User:
    if username is not None:
        return accounts.require_user_by_name(session, username)
    assert user_id is not None  # AdminApiKeyCreate names the owner one way or the other
    return accounts.require_user(session, user_id)


def _create_key(session: SessionDep, body: ApiKeyCreate, *, user_id: str, actor: str) -> dict:
    """Create the key the body describes for `user_id`, commit, and show the plain key once."""
    public, plain = apikeys.create_key(
        session,
        user_id=user_id,
        name=body.name,
        expires_at=body.expiry(),
        allowed_models=body.allowed_models,
        actor=actor,
    )
    session.commit()
    return envelope.ok("API key created; copy it now, it is not shown again", key=plain, api_key=public.as_dict())


# --- the user's own keys -----------------------------------------------------------------


@router.post("/user/api_keys")
def create_my_key(body: ApiKeyCreate, user: CurrentUser, session: SessionDep) -> dict:
    """Create a key for the signed-in user."""
    return _create_key(session, body, user_id=user.id, actor=actor_of(user))


@router.get("/user/api_keys")
def list_my_keys(user: CurrentUser, session: SessionDep) -> dict:
    """The signed-in user's keys (prefix only)."""
    keys = apikeys.list_keys(session, user_id=user.id)
    return envelope.ok("ok", api_keys=[k.as_dict() for k in keys])


@router.post("/user/api_keys/{key_id}/revoke")
def revoke_my_key(key_id: IdPath, user: CurrentUser, session: SessionDep) -> dict:
    """Revoke one of the signed-in user's keys."""
    public = apikeys.revoke_key(session, key_id=key_id, owner_id=user.id, actor=actor_of(user))
    session.commit()
    return envelope.ok("API key revoked", api_key=public.as_dict())


# --- admins ------------------------------------------------------------------------------


@router.post("/admin/api_keys")
def admin_create_key(body: AdminApiKeyCreate, admin: CurrentAdmin, session: SessionDep) -> dict:
    """Create a key for any user."""
    owner = _owner(session, body.user_id, body.username)
    return _create_key(session, body, user_id=owner.id, actor=actor_of(admin))


@router.get("/admin/api_keys")
def admin_list_keys(
    admin: CurrentAdmin,
    session: SessionDep,
    user_id: Annotated[str | None, Query(max_length=32)] = None,
    username: Annotated[str | None, Query(max_length=64)] = None,
) -> dict:
    """Every key, or one user's (by user_id or username)."""
    owner_id = _owner(session, user_id, username).id if (user_id or username) else None
    keys = apikeys.list_keys(session, user_id=owner_id)
    return envelope.ok("ok", api_keys=[k.as_dict() for k in keys])


@router.post("/admin/api_keys/{key_id}/revoke")
def admin_revoke_key(key_id: IdPath, admin: CurrentAdmin, session: SessionDep) -> dict:
    """Revoke anyone's key."""
    public = apikeys.revoke_key(session, key_id=key_id, actor=actor_of(admin))
    session.commit()
    return envelope.ok("API key revoked", api_key=public.as_dict())
