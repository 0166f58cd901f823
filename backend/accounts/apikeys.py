"""Per-user API keys (`sk-...`) for the OpenAI-compatible /v1.

Only a SHA-256 of a key is stored; the key itself is shown once, when it is created.
A key may expire, may be limited to a list of models, and may be revoked by its owner or
an admin; an expired or revoked key is refused like an unknown one (HTTP 401).

Browser keys (`scope = "browser"`): the StrangeLoop frontend chats with an online model
straight from the browser, with the connection's `aiApi` and `aiToken`. A user's own view
of a model answers Meteor's `/v1/chat/completions` and a key minted for that user and that
one model (`model_id`), valid `METEOR_BROWSER_KEY_MINUTES`: the chat goes through Meteor, is
charged to the user's quota, and the provider's key never leaves the server. `/v1` refuses
such a key for any other model (403) and after it expires (401). Browser keys do not count
towards the per-user key limit, are not listed with the user's own keys, and expired ones
are deleted when the user's next one is minted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend import audit, security
from backend.accounts import service as accounts
from backend.cache import TtlCache, forget_on_write
from backend.errors import ServiceError, forbidden, unauthorized
from db.models import ApiKey, ModelInfo, User
from db.session import reading

MAX_KEYS_PER_USER = 50
MAX_ALLOWED_MODELS = 100
# Writing last_used_at on every request would add a write per call; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)
BROWSER_SCOPE = "browser"
# `session.info` entry set by `authenticate` when last_used_at is due: the key's id, for the
# caller to `touch` in a short write of its own (the lookup itself stays a read).
TOUCHED = "api_key_touched"


@dataclass(frozen=True)
class ApiKeyPublic:
    """What may be shown about a key: never the key or its hash."""

    id: int
    user_id: str
    name: str
    prefix: str
    allowed_models: list[str] | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"

    def as_dict(self) -> dict:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "prefix": self.prefix,
            "allowed_models": self.allowed_models,
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "created_at": iso(self.created_at),
            "status": self.status,
        }


def allowed_models_of(key: ApiKey) -> list[str] | None:
    """The key's model allow-list; None means every model the owner may use."""
    if not key.allowed_models:
        return None
    return list(json.loads(key.allowed_models))


def public(key: ApiKey) -> ApiKeyPublic:
    """The displayable view of a key row."""
    return ApiKeyPublic(
        id=key.id,
        user_id=key.user_id,
        name=key.name,
        prefix=key.prefix,
        allowed_models=allowed_models_of(key),
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        created_at=key.created_at,
    )


def _check_models(session: Session, names: list[str]) -> list[str]:
    unique = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not unique:
        raise ServiceError("APP_QUERY_METHOD_ERROR", "allowed_models must name at least one model (or be omitted)", 422)
    if len(unique) > MAX_ALLOWED_MODELS:
        raise ServiceError("APP_QUERY_METHOD_ERROR", f"at most {MAX_ALLOWED_MODELS} allowed models", 422)
    known = set(session.scalars(select(ModelInfo.model_name).where(ModelInfo.model_name.in_(unique))))
    missing = [n for n in unique if n not in known]
    if missing:
        raise ServiceError("MODEL_ERROR", f"unknown model(s) in allowed_models: {', '.join(missing)}", 404)
    return unique


def create_key(
    session: Session,
    *,
    user_id: str,
    name: str = "",
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    actor: str,
) -> tuple[ApiKeyPublic, str]:
    """Create a key for a user; returns its public view and the key itself (shown once)."""
    accounts.require_user(session, user_id)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise ServiceError("APP_QUERY_METHOD_ERROR", "expires_at must be in the future", 422)
    models = _check_models(session, allowed_models) if allowed_models is not None else None
    active = session.scalars(
        select(ApiKey.id).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None), ApiKey.scope.is_(None))
    ).all()
    if len(active) >= MAX_KEYS_PER_USER:
        raise ServiceError("APP_QUERY_METHOD_ERROR", f"at most {MAX_KEYS_PER_USER} active keys per user", 409)
    plain, digest, prefix = security.new_api_key()
    key = ApiKey(
        user_id=user_id,
        name=name.strip(),
        prefix=prefix,
        key_hash=digest,
        allowed_models=json.dumps(models, ensure_ascii=False) if models else None,
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="api_key.create",
        target_type="api_key",
        target_id=str(key.id),
        detail={"user_id": user_id, "name": key.name, "prefix": prefix, "allowed_models": models},
    )
    return public(key), plain


def list_keys(session: Session, *, user_id: str | None = None, include_revoked: bool = True) -> list[ApiKeyPublic]:
    """Keys, newest first: one user's, or everyone's (for admins)."""
    stmt = select(ApiKey).where(ApiKey.scope.is_(None)).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    if user_id is not None:
        stmt = stmt.where(ApiKey.user_id == user_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return [public(k) for k in session.scalars(stmt)]


def active_keys(session: Session, *, limit: int = 200) -> list[dict[str, Any]]:
    """The newest unrevoked keys of every user: id, prefix, name and the owner's username."""
    rows = session.execute(
        select(ApiKey, User.username)
        .join(User, User.id == ApiKey.user_id)
        .where(ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.id.desc())
        .limit(limit)
    )
    return [{"key_id": k.id, "prefix": k.prefix, "name": k.name, "username": u} for k, u in rows]


def revoke_key(session: Session, *, key_id: int, actor: str, owner_id: str | None = None) -> ApiKeyPublic:
    """Revoke a key (idempotent). With `owner_id`, only that user's key may be revoked."""
    key = session.get(ApiKey, key_id)
    if key is None or (owner_id is not None and key.user_id != owner_id):
        raise ServiceError("APP_NOT_FOUND_ERROR", f"API key {key_id} not found", 404)
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        audit.record(
            session,
            actor=actor,
            action="api_key.revoke",
            target_type="api_key",
            target_id=str(key.id),
            detail={"user_id": key.user_id, "prefix": key.prefix},
        )
        session.flush()
    return public(key)


# Every /v1 request checks its key: a read per request otherwise. A write in this process
# to a key or a user (revoke, expire, disable, delete) forgets the cache at once; other
# worker processes see it within `cache.TTL_SECONDS` (2 s), the one delay a revocation has.
_keys: TtlCache[tuple[User, ApiKey]] = TtlCache()
forget_on_write(_keys, flushed=(ApiKey, User), executed=(ApiKey,))


def authenticate(session: Session, plain: str) -> tuple[User, ApiKey]:
    """The active user and key behind `sk-...`; 401 for an unknown, revoked or expired key.
    Usually no query (`_keys`); else one read on the unique index of key_hash, the owner
    joined in (a read-only transaction when none is open). The rows returned are detached
    copies: read them, never change them."""
    if not plain.startswith(security.API_KEY_PREFIX) or len(plain) > 200:
        raise unauthorized("invalid API key")
    digest = security.hash_api_key(plain)
    cache_key = (session.get_bind().engine, digest)
    found = _keys.peek(cache_key)
    if found is None:
        row = (
            reading(session)
            .execute(select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == digest))
            .first()
        )
        if row is None:
            raise unauthorized("invalid API key")
        found = (_detached(session, row[1]), _detached(session, row[0]))
        _keys.put(cache_key, found)
    user, key = found
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        raise unauthorized("this API key has been revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise unauthorized("this API key has expired")
    if user.status != "active":
        raise forbidden("this account is disabled")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        session.info[TOUCHED] = key.id
    return user, key


T = TypeVar("T", User, ApiKey)


def _detached(session: Session, row: T) -> T:
    """A row taken out of its session, every column loaded: safe to share between requests."""
    session.expunge(row)
    return row


def touch(session: Session, key_id: int) -> None:
    """Stamp a key's last_used_at (what `authenticate` asked for in `session.info[TOUCHED]`)."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(last_used_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )


def mint_browser_key(session: Session, *, user_id: str, model: ModelInfo, minutes: int) -> str:
    """A key for this user's browser, good for `model` only and for `minutes`; returns the key
    itself (only its hash is stored). The user's expired browser keys are deleted first."""
    now = datetime.now(UTC)
    session.execute(
        delete(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.scope == BROWSER_SCOPE, ApiKey.expires_at <= now)
        .execution_options(synchronize_session=False)
    )
    plain, digest, prefix = security.new_api_key()
    session.add(
        ApiKey(
            user_id=user_id,
            name=f"browser: {model.model_name}"[:64],
            prefix=prefix,
            key_hash=digest,
            allowed_models=json.dumps([model.model_name], ensure_ascii=False),
            expires_at=now + timedelta(minutes=minutes),
            scope=BROWSER_SCOPE,
            model_id=model.model_id,
        )
    )
    session.flush()
    return plain


def names_of_model(model: ModelInfo) -> set[str]:
    """The names a client may call `model` by with a key scoped to it: its own name, its
    base model, and its connection's aiName (what the StrangeLoop frontend sends)."""
    names = {model.model_name, model.ai_name, model.base_model_name}
    if model.ai_online is not None:
        names.add(model.ai_online.ai_name)
    return {n for n in names if n}


def model_for_key(session: Session, key: ApiKey, requested: str) -> str:
    """The model name a /v1 request may run under this key: for a browser key, its one model
    (called by any name of names_of_model; anything else is a 403); for any other key,
    `requested` once check_model_allowed passes."""
    if key.scope != BROWSER_SCOPE:
        check_model_allowed(key, requested)
        return requested
    model = reading(session).get(ModelInfo, key.model_id) if key.model_id is not None else None
    if model is None or requested not in names_of_model(model):
        raise forbidden(f"this API key may not use model {requested!r}")
    return model.model_name


def check_model_allowed(key: ApiKey, model_name: str) -> None:
    """Refuse (403) a model outside the key's allow-list."""
    allowed = allowed_models_of(key)
    if allowed is not None and model_name not in allowed:
        raise forbidden(f"this API key may not use model {model_name!r}")
