"""The model registry: which engine runs a model name, with which persona.

A model (`model_info`) is a persona (`model_file` + its example pairs) over a base model:
- link_type 0, local: the embedded llama.cpp engine for the base model
  `smollm2-135m-instruct`, any other base model on Ollama at `Settings.ollama_url`;
- link_type 1, online: the connection `model_ai_online` (URL, encrypted key, protocol
  openai | ollama | spark, timeout in seconds).

No model name means the enabled default (`is_default`). A user may use shared models
(user_id NULL) and their own; a disabled model is refused.

A model with routes (`model_routes`, backend/catalog/routing.py) runs on those connections
instead of its own: `resolve()` returns it with `routes`, one ResolvedModel per connection
(the same persona and base model, that connection's protocol, URL, key and timeout), and
the gateway chooses among them (`gateway.pick_connection`). Its own `aiol_id` connection
takes part only when it is listed as a route too.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session, joinedload

from backend import security
from backend.cache import TtlCache, forget_on_write
from backend.catalog import routing
from backend.catalog.connections import api_base, reaches_private
from backend.config import Settings
from backend.errors import ServiceError
from backend.providers import netguard
from backend.providers.base import ChatProvider
from backend.providers.params import PersonaParams
from backend.providers.registry import EMBEDDED_BASE_MODEL
from db.models import ModelAiOnline, ModelFile, ModelFileEgMessage, ModelInfo, ModelRoute
from db.session import reading

log = logging.getLogger("meteor.models")

PROTOCOLS = ("openai", "ollama", "spark")
# Local engines have no connection row to carry a timeout; the embedded one may queue.
LOCAL_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class ResolvedModel:
    """Everything the gateway needs to call a model. `api_key` is the decrypted upstream
    key: it is kept out of repr and must never be logged or returned."""

    model_id: int
    name: str
    provider: str  # embedded | ollama | openai | spark
    base_model: str
    base_url: str | None
    timeout: float
    params: PersonaParams
    system: str | None
    examples: list[tuple[str, str]]
    disabled: bool = False
    api_key: str | None = field(default=None, repr=False)
    # May calls for this model reach loopback / private addresses? Only for connections admins
    # manage (connections.reaches_private) and the local engines; the providers' guarded
    # transports (netguard.guarded_transport) take it as `allow_private`.
    allow_private: bool = False
    connection_id: int | None = None  # the model_ai_online row it runs on (None: a local engine)
    route: routing.Route | None = None  # one of the model's routes: priority, weight, health
    routes: tuple[ResolvedModel, ...] = ()  # a model with routes: one per connection, unordered


def _not_found(name: str | None) -> ServiceError:
    if name is None:
        return ServiceError("MODEL_ERROR", "no default model is configured and enabled; name a model", 404)
    return ServiceError("MODEL_ERROR", f"no model named {name!r}", 404)


def find_model(session: Session, *, name: str | None, user_id: str | None, admin: bool = False) -> ModelInfo:
    """The model_info row a caller may use: by name, or the enabled default when None.
    Users see shared models and their own; admins see every model."""
    # the persona and the connection joined in (many-to-one), the examples in one more SELECT
    stmt = select(ModelInfo).options(
        joinedload(ModelInfo.model_file).selectinload(ModelFile.examples), joinedload(ModelInfo.ai_online)
    )
    if not admin:
        owner: ColumnElement[bool] = ModelInfo.user_id.is_(None)
        if user_id is not None:
            owner = or_(owner, ModelInfo.user_id == user_id)
        stmt = stmt.where(owner)
    if name is None:
        stmt = stmt.where(ModelInfo.is_default.is_(True), ModelInfo.disable == 0).order_by(ModelInfo.model_id)
        info = session.scalars(stmt.limit(1)).first()
    else:
        info = session.scalars(stmt.where(ModelInfo.model_name == name)).first()
    if info is None:
        raise _not_found(name)
    return info


# A model with no routes resolves to the same thing until an admin edits the catalogue: every
# chat would otherwise read the model, persona, examples and connection and decrypt its key.
# A write in this process that touches the catalogue forgets it at once (`forget_on_write`),
# other processes within `cache.TTL_SECONDS`. Routed models carry their connections' health,
# which changes with every failure, so they are read each time.
_resolved: TtlCache[ResolvedModel] = TtlCache()
CATALOGUE = (ModelInfo, ModelFile, ModelFileEgMessage, ModelAiOnline, ModelRoute)
forget_on_write(_resolved, flushed=CATALOGUE, executed=CATALOGUE)


def resolve(
    session: Session,
    settings: Settings,
    *,
    name: str | None,
    user_id: str | None,
    admin: bool = False,
) -> ResolvedModel:
    """Resolve a model name to provider, base model, persona and connection.

    Raises MODEL_ERROR: 404 for an unknown model (or another user's), 403 for a disabled one
    (admins may still test a disabled model), 502 for a broken connection row."""
    # what a resolution depends on: the database, and the two settings it reads
    key = (session.get_bind().engine, settings.ollama_url, settings.secret("secret_key"), name, user_id, admin)
    found = _resolved.peek(key)
    if found is not None:
        return found
    model = _resolve(reading(session), settings, name=name, user_id=user_id, admin=admin)
    if not model.routes:
        _resolved.put(key, model)
    return model


def _resolve(
    session: Session,
    settings: Settings,
    *,
    name: str | None,
    user_id: str | None,
    admin: bool = False,
) -> ResolvedModel:
    info = find_model(session, name=name, user_id=user_id, admin=admin)
    if info.disable and not admin:
        raise ServiceError("MODEL_ERROR", f"model {info.model_name!r} is disabled", 403)
    persona = info.model_file
    try:
        params = PersonaParams.from_model_file(persona)
    except ValueError as exc:
        raise ServiceError("MODEL_ERROR", f"model {info.model_name!r} has an invalid persona: {exc}", 502) from None
    examples = [(e.user_message, e.model_message) for e in persona.examples] if persona else []
    system = persona.system if persona else None
    base_model = (info.ai_name or "").strip()

    persona_fields: dict[str, Any] = dict(model_id=info.model_id, name=info.model_name, params=params, system=system,
                          examples=examples, disabled=bool(info.disable))  # fmt: skip
    routed = routing.connections_for(session, info.model_id)
    if routed:
        return _over_routes(settings, info, routed, base_model, persona_fields)
    if info.link_type == 1:
        if info.ai_online is None:
            raise ServiceError("MODEL_ERROR", f"model {info.model_name!r} has no online connection", 502)
        return _over_connection(settings, info.ai_online, base_model, persona_fields)
    if not base_model:
        raise ServiceError("MODEL_ERROR", f"model {info.model_name!r} names no base model", 502)
    embedded = base_model.lower() == EMBEDDED_BASE_MODEL
    return ResolvedModel(
        provider="embedded" if embedded else "ollama",
        base_model=base_model,
        base_url=None if embedded else settings.ollama_url,
        timeout=LOCAL_TIMEOUT_SECONDS,
        allow_private=True,  # the embedded engine, or Ollama at the admin-configured Settings.ollama_url
        **persona_fields,
    )


def _over_connection(settings: Settings, conn: ModelAiOnline, base_model: str, persona: dict) -> ResolvedModel:
    """The model (its persona fields) over one online connection; MODEL_ERROR 502 when the
    connection row cannot be used (unknown protocol, a key this server cannot decrypt)."""
    protocol = (conn.protocol or "openai").lower()
    if protocol not in PROTOCOLS:
        raise ServiceError("MODEL_ERROR", f"connection {conn.ai_name!r} has unknown protocol {protocol!r}", 502)
    try:
        api_key = security.decrypt_secret(settings, conn.ai_token_encrypted)
    except ValueError:
        raise ServiceError(
            "MODEL_ERROR", f"the key of connection {conn.ai_name!r} cannot be decrypted with this server's key", 502
        ) from None
    return ResolvedModel(
        provider=protocol,
        base_model=base_model or conn.ai_version or conn.ai_name,
        base_url=_upstream_base(conn.ai_api, conn.protocol or "openai"),
        timeout=float(conn.timeout or 30),
        api_key=api_key,
        allow_private=reaches_private(conn),
        connection_id=conn.ai_id,
        **persona,
    )


def _over_routes(
    settings: Settings,
    info: ModelInfo,
    routed: list[tuple[routing.Route, ModelAiOnline]],
    base_model: str,
    persona: dict,
) -> ResolvedModel:
    """A model with routes: one ResolvedModel per usable connection. A route whose row cannot
    be used is left out (logged); 502 when none is left."""
    variants, first_error = [], None
    for route, conn in routed:
        try:
            variants.append(replace(_over_connection(settings, conn, base_model, persona), route=route))
        except ServiceError as exc:
            log.warning("model %s: route over connection %s left out: %s", info.model_name, conn.ai_id, exc.message)
            first_error = first_error or exc
    if not variants:
        raise first_error  # type: ignore[misc]
    return replace(variants[0], routes=tuple(variants))


def usable_models(session: Session, *, user_id: str | None) -> list[ModelInfo]:
    """The enabled models a user may call (shared and their own), by name."""
    owner: ColumnElement[bool] = ModelInfo.user_id.is_(None)
    if user_id is not None:
        owner = or_(owner, ModelInfo.user_id == user_id)
    stmt = select(ModelInfo).where(owner, ModelInfo.disable == 0).order_by(ModelInfo.model_name)
    return list(session.scalars(stmt))


_providers: OrderedDict[tuple, ChatProvider] = OrderedDict()
_providers_lock = threading.Lock()
PROVIDER_CACHE_SIZE = 64


def _upstream_base(ai_api: str, protocol: str) -> str:
    """The document stores full endpoints (`…/v1/chat/completions`); SDKs want the base.
    Spark's websocket URL is the endpoint itself."""
    return ai_api if protocol == "spark" else api_base(ai_api, protocol)


def open_provider(model: ResolvedModel, settings: Settings) -> ChatProvider:
    """The provider adapter that runs `model`. Adapters are kept per connection (protocol,
    URL, key, timeout): building an HTTP client costs ~30 ms (its TLS context) and a kept one
    reuses its upstream connections. The embedded engine is one per process anyway."""
    from backend.providers import registry

    if model.provider == "embedded":
        return registry.chat_provider("embedded", settings=settings)
    if model.base_url and model.base_url != settings.ollama_url:
        # Checked at every call, not only when saved: DNS may have moved the host since.
        netguard.check_url(model.base_url, settings, allow_private=model.allow_private)
    cache_key = (model.provider, model.base_url, model.api_key, model.timeout, model.allow_private)
    with _providers_lock:
        provider = _providers.get(cache_key)
        if provider is not None:
            _providers.move_to_end(cache_key)
            return provider
    provider = registry.chat_provider(
        model.provider,
        base_url=model.base_url,
        api_key=model.api_key,
        timeout=model.timeout,
        settings=settings,
        allow_private=model.allow_private,
    )
    with _providers_lock:
        _providers[cache_key] = provider
        while len(_providers) > PROVIDER_CACHE_SIZE:
            _providers.popitem(last=False)
    return provider
