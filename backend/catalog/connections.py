"""Online model connections (seed-003 `model_ai_online`) and the "test connection" probe.

- The key (`aiToken`) is stored encrypted and every answer shows it masked (`sk-…abcd`).
  Sending the masked value back on an update keeps the stored key.
- `aiApi` goes through the SSRF guard (`netguard.check_url`) when saved and again right
  before the server calls it.
- Ownership: a connection a user created (created_by = the user's id) is theirs; one an
  admin created is shared: every user may read it (key masked) and link models to it, only
  admins change it. Another user's connection answers 404, by id or by name
  (`find_by_name`, used wherever a connection is chosen by its name).
- Reach: only shared connections (and an admin's unsaved test) may call loopback or
  private addresses (`reaches_private`); a user's own connection reaches public hosts
  only, whatever METEOR_ALLOW_LOOPBACK / METEOR_ALLOWED_PRIVATE_HOSTS say.
- `aiToken` must be printable ASCII (`check_token`): it is sent as an HTTP header value.
- `probe()` lists the upstream's models (OpenAI-compatible `GET {base}/models`, Ollama
  `GET /api/tags`) and measures the latency. It never follows redirects (a redirect could
  lead past the guard), connects only to addresses the guard checked for that very
  connection (`netguard.guarded_transport`) and never puts the key into an answer or an
  error message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from backend import security
from backend.accounts.changes import Change, save_changes
from backend.accounts.viewer import (
    Page,
    Viewer,
    audit_admin_change,
    bad_request,
    created_range,
    flush_unique,
    name_taken,
    not_found,
    optional_text,
    required_text,
    run_listing,
)
from backend.config import Settings
from backend.errors import ServiceError
from backend.providers import netguard
from db.models import ModelAiOnline, ModelInfo

# Chat protocols, then the recognition engines of backend/media/recognize.py.
PROTOCOLS = ("openai", "ollama", "spark", "iflytek-iat", "iflytek-ocr", "openai-audio", "openai-vision")
NO_MODEL_LIST = ("spark", "iflytek-iat", "iflytek-ocr")
AI_TYPES = (1, 2, 3)  # llm, chat, image
DEFAULT_TIMEOUT = 30
MAX_TIMEOUT = 86400
PROBE_TIMEOUT_CAP = 30.0
PROBE_MAX_MODELS = 200
MASK_MARK = "…"


# --- ownership ---------------------------------------------------------------------------


def is_shared(conn: ModelAiOnline) -> bool:
    """Created by an admin or the system, not by a user (users' rows carry their 32-hex id)."""
    owner = conn.created_by
    return owner is None or len(owner) != 32 or owner.startswith("admin:")


def _visible(query, viewer: Viewer):
    if viewer.is_admin:
        return query
    owner = ModelAiOnline.created_by
    return query.where(or_(owner == viewer.user_id, owner.is_(None), func.length(owner) != 32, owner.like("admin:%")))


def may_see(conn: ModelAiOnline, viewer: Viewer) -> bool:
    """The visibility rule (the same as `_visible` in SQL): admins see every connection,
    users their own and the shared ones."""
    return viewer.is_admin or conn.created_by == viewer.user_id or is_shared(conn)


def may_change(conn: ModelAiOnline, viewer: Viewer) -> bool:
    return viewer.is_admin or conn.created_by == viewer.user_id


def reaches_private(conn: ModelAiOnline) -> bool:
    """Whether calls made for this connection may reach loopback and private addresses:
    only for shared connections (admins configure them, e.g. a local Ollama). A user's own
    connection reaches public addresses only, whoever tests or uses it."""
    return is_shared(conn)


def get_connection(session: Session, viewer: Viewer, ai_id: int, *, for_change: bool = False) -> ModelAiOnline:
    """The connection if the viewer may see it (404 otherwise); with `for_change`, 403 on
    a shared connection for a user."""
    conn = session.get(ModelAiOnline, ai_id) if 0 < ai_id <= 2**31 - 1 else None
    if conn is None or not may_see(conn, viewer):
        raise not_found("online model", ai_id)
    if for_change and not may_change(conn, viewer):
        raise ServiceError("PERMISSION_NOT_ALLOW", "shared connections are managed by admins", 403)
    return conn


def find_by_name(session: Session, viewer: Viewer, ai_name: str) -> ModelAiOnline | None:
    """The connection named `ai_name` if the viewer may see it, else None — another user's
    private connection is indistinguishable from a name that does not exist. Everything
    that picks a connection by name (media engines, model links) goes through here."""
    query = _visible(select(ModelAiOnline), viewer).where(ModelAiOnline.ai_name == ai_name)
    return session.scalars(query.limit(1)).first()


# --- answers -----------------------------------------------------------------------------


def masked_token(settings: Settings, conn: ModelAiOnline) -> str | None:
    """The stored key, masked; `…` when it cannot be decrypted with this server's key."""
    try:
        return security.mask_secret(security.decrypt_secret(settings, conn.ai_token_encrypted))
    except ValueError:
        return MASK_MARK


# --- queries -----------------------------------------------------------------------------


def find_connections(
    session: Session,
    viewer: Viewer,
    *,
    ai_id: int | None = None,
    ai_name: str | None = None,
    ai_version: str | None = None,
    ai_type: int | None = None,
    created_start: str | None = None,
    created_end: str | None = None,
    page: Page | None = None,
    bare_limit: int = 1000,
) -> tuple[list[ModelAiOnline], int | None]:
    """The connections the viewer may see, newest first, filtered by any subset of aiId,
    aiName, aiVersion, aiType and an inclusive created range; and, when paged, their total."""
    query = _visible(select(ModelAiOnline), viewer)
    if ai_id is not None:
        query = query.where(ModelAiOnline.ai_id == ai_id)
    if ai_name:
        query = query.where(ModelAiOnline.ai_name == ai_name)
    if ai_version:
        query = query.where(ModelAiOnline.ai_version == ai_version)
    if ai_type is not None:
        query = query.where(ModelAiOnline.ai_type == ai_type)
    query = query.where(*created_range(ModelAiOnline.created_time, created_start, created_end))
    return run_listing(session, query.order_by(ModelAiOnline.ai_id.desc()), page, bare_limit=bare_limit)


# --- changes -----------------------------------------------------------------------------


def infer_protocol(ai_api: str) -> str:
    """Ollama when the URL looks like one (port 11434 or an /api/ path), else OpenAI-compatible."""
    parts = urlsplit(ai_api)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port == 11434 or parts.path.startswith("/api/"):
        return "ollama"
    return "openai"


def check_protocol(value: Any) -> str:
    """A protocol name from a request, lower-cased; 400 unless it is one of PROTOCOLS."""
    if not isinstance(value, str) or value.lower() not in PROTOCOLS:
        raise bad_request(f"protocol must be one of {', '.join(PROTOCOLS)}")
    return value.lower()


def _ai_type(value: Any) -> int:
    if value not in AI_TYPES:
        raise bad_request("aiType must be 1 (llm), 2 (chat) or 3 (image)")
    return value


def _timeout(value: Any) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT:
        raise bad_request(f"timeout must be 1-{MAX_TIMEOUT} seconds")
    return value


def _check_api(settings: Settings, value: Any, *, allow_private: bool) -> str:
    api = required_text(value, "aiApi", 500)
    netguard.check_url(api, settings, on_save=True, allow_private=allow_private)
    return api


def check_token(value: Any) -> str | None:
    """An aiToken from a request: at most 500 characters of printable ASCII (it travels in
    an HTTP header or a signed URL, which carry nothing else); 400 otherwise."""
    token = optional_text(value, "aiToken", 500)
    if token is not None and not all(" " <= ch <= "~" for ch in token):
        raise bad_request("aiToken must be printable ASCII (letters, digits and punctuation): API keys are sent as-is")
    return token


def _name_taken(session: Session, name: str, exclude: int | None = None) -> bool:
    return name_taken(session, ModelAiOnline.ai_name, ModelAiOnline.ai_id, name, exclude)


def _duplicate(name: str) -> ServiceError:
    return ServiceError("APP_QUERY_METHOD_ERROR", f"an online model named {name!r} already exists", 409)


def create_connection(
    session: Session,
    settings: Settings,
    viewer: Viewer,
    *,
    ai_name: str | None,
    ai_api: str | None,
    ai_token: str | None = None,
    ai_version: str | None = None,
    ai_type: int | None = None,
    timeout: int | None = None,
    protocol: str | None = None,
) -> ModelAiOnline:
    """A new connection owned by the viewer (a user) or shared (an admin). aiName is
    unique (409); aiApi must pass the SSRF guard (400); the key is stored encrypted."""
    name = required_text(ai_name, "aiName", 50)
    api = _check_api(settings, ai_api, allow_private=viewer.is_admin)  # a user's connection: public hosts only
    token = check_token(ai_token)
    conn = ModelAiOnline(
        ai_name=name,
        ai_api=api,
        ai_token_encrypted=security.encrypt_secret(settings, token),
        ai_version=optional_text(ai_version, "aiVersion", 50),
        ai_type=1 if ai_type is None else _ai_type(ai_type),
        timeout=DEFAULT_TIMEOUT if timeout is None else _timeout(timeout),
        protocol=infer_protocol(api) if protocol is None else check_protocol(protocol),
        created_by=viewer.stamp,
    )
    if _name_taken(session, name):
        raise _duplicate(name)
    session.add(conn)
    flush_unique(session, _duplicate(name))
    audit_admin_change(session, viewer, "add_connection", "connection", conn.ai_id, name=name, protocol=conn.protocol)
    return conn


class ConnectionUpdate(BaseModel):
    """The fields of a connection to change (only those set). None clears aiVersion and
    keeps aiToken, aiType, timeout and protocol; aiName and aiApi cannot be cleared."""

    ai_name: str | None = None
    ai_api: str | None = None
    ai_token: str | None = None  # the masked value answers show keeps the stored key; "" clears it
    ai_version: str | None = None
    ai_type: int | None = None
    timeout: int | None = None
    protocol: str | None = None


def _keeps_token(value: str | None) -> bool:
    return value is None or MASK_MARK in value


def update_connection(
    session: Session, settings: Settings, viewer: Viewer, ai_id: int, update: ConnectionUpdate
) -> ModelAiOnline:
    """Change the fields `update` was given. An aiToken that is null, absent, or the masked
    value shown by this server keeps the stored key; an empty string clears it."""
    conn = get_connection(session, viewer, ai_id, for_change=True)

    def unique_name(value: Any) -> str:
        name = required_text(value, "aiName", 50)
        if _name_taken(session, name, exclude=conn.ai_id):
            raise _duplicate(name)
        return name

    rules = {
        "ai_name": Change("aiName", unique_name),
        "ai_api": Change("aiApi", lambda v: _check_api(settings, v, allow_private=reaches_private(conn))),
        "ai_token": Change(
            "aiToken",
            lambda v: security.encrypt_secret(settings, check_token(v)),
            attr="ai_token_encrypted",
            keeps=_keeps_token,
        ),
        "ai_version": Change("aiVersion", lambda v: optional_text(v, "aiVersion", 50)),
        "ai_type": Change.unless_none("aiType", _ai_type),
        "timeout": Change.unless_none("timeout", _timeout),
        "protocol": Change.unless_none("protocol", check_protocol),
    }
    save_changes(
        session,
        viewer,
        conn,
        update,
        rules,
        duplicate=lambda: _duplicate(conn.ai_name),
        audit=("modify_connection", "connection", conn.ai_id),
    )
    return conn


def delete_connections(session: Session, viewer: Viewer, ids: list[int]) -> int:
    """Delete these connections (all or nothing); models linked to them keep existing,
    unlinked."""
    for ai_id in ids:
        get_connection(session, viewer, ai_id, for_change=True)
    session.execute(
        update(ModelInfo)
        .where(ModelInfo.aiol_id.in_(ids))
        .values(aiol_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(ModelAiOnline).where(ModelAiOnline.ai_id.in_(ids)).execution_options(synchronize_session=False)
    )
    audit_admin_change(session, viewer, "delete_connections", "connection", ",".join(map(str, ids)))
    return len(ids)


# --- test connection ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeTarget:
    """What the probe needs; `token` is the decrypted key (kept out of repr).
    `allow_private`: may the probe reach loopback / private addresses — only for a shared
    connection or an admin's unsaved test (see `reaches_private`)."""

    ai_api: str
    protocol: str
    timeout: float
    name: str | None = None
    token: str | None = field(default=None, repr=False)
    allow_private: bool = False


@dataclass
class ProbeResult:
    ok: bool
    latency_ms: int | None
    models: list[str]
    error: str | None = None
    url: str | None = None


def connection_target(session: Session, settings: Settings, viewer: Viewer, ai_id: int) -> ProbeTarget:
    """The probe target of a connection the viewer may see (read it, then end the
    transaction before probing: the probe is a network call)."""
    conn = get_connection(session, viewer, ai_id)
    try:
        token = security.decrypt_secret(settings, conn.ai_token_encrypted)
    except ValueError:
        raise ServiceError(
            "MODEL_ERROR", "the stored key cannot be decrypted with this server's METEOR_SECRET_KEY", 500
        ) from None
    return ProbeTarget(
        ai_api=conn.ai_api,
        protocol=conn.protocol or "openai",
        timeout=float(conn.timeout),
        name=conn.ai_name,
        token=token,
        allow_private=reaches_private(conn),
    )


_ENDPOINT_SUFFIXES = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/models",
    "/audio/transcriptions",
    "/api/chat",
    "/api/generate",
)


def api_base(ai_api: str, protocol: str) -> str:
    """The base URL of an upstream given either its base (`https://host/v1`) or a full
    endpoint as the document stores it (`https://host/v1/chat/completions`)."""
    parts = urlsplit(ai_api.strip())
    path = parts.path.rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if protocol == "ollama":
        path = path[: -len("/api")] if path.endswith("/api") else path
        path = path[: -len("/v1")] if path.endswith("/v1") else path
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def models_url(ai_api: str, protocol: str) -> str:
    base = api_base(ai_api, protocol)
    return f"{base}/api/tags" if protocol == "ollama" else f"{base}/models"


def _model_names(protocol: str, body: Any) -> list[str]:
    if protocol == "ollama":
        items = body.get("models") if isinstance(body, dict) else None
        key = "name"
    else:
        items = body.get("data") if isinstance(body, dict) else None
        key = "id"
    if not isinstance(items, list):
        raise ValueError("unexpected answer shape")
    names = [str(item.get(key) or item.get("model")) for item in items if isinstance(item, dict)]
    return names[:PROBE_MAX_MODELS]


def probe(target: ProbeTarget, settings: Settings) -> ProbeResult:
    """List the upstream's models and measure the round trip. Failures come back as
    `ok=False` with a reason (never the key); an unsafe URL raises UnsafeURL (400)."""
    if target.protocol in NO_MODEL_LIST:
        raise bad_request("test connection lists models; iFlytek services have no model list to test against")
    url = models_url(target.ai_api, target.protocol)
    netguard.check_url(url, settings, allow_private=target.allow_private)
    headers = {"Accept": "application/json"}
    token = check_token(target.token)  # a key stored before the check existed is refused here
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = min(float(target.timeout or DEFAULT_TIMEOUT), PROBE_TIMEOUT_CAP)
    transport = netguard.guarded_transport(settings, allow_private=target.allow_private, asynchronous=False)
    started = time.perf_counter()
    try:
        # the transport connects only to the addresses it checked itself (DNS may have
        # changed since check_url); redirects are reported, never followed
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.get(url, headers=headers)
        latency = int((time.perf_counter() - started) * 1000)
    except httpx.TimeoutException:
        return ProbeResult(False, None, [], f"no answer within {timeout:g} s", url)
    except httpx.HTTPError as exc:
        return ProbeResult(False, None, [], f"cannot connect: {type(exc).__name__}", url)
    if response.is_redirect:
        return ProbeResult(
            False, latency, [], f"the upstream redirects (HTTP {response.status_code}); use the final URL", url
        )
    if response.status_code in (401, 403):
        return ProbeResult(False, latency, [], f"the upstream refused the key (HTTP {response.status_code})", url)
    if response.status_code != 200:
        return ProbeResult(False, latency, [], f"the upstream answered HTTP {response.status_code}", url)
    try:
        names = _model_names(target.protocol, response.json())
    except ValueError:
        return ProbeResult(False, latency, [], "the upstream's answer is not a model list", url)
    return ProbeResult(True, latency, names, None, url)


def probe_connection(maker, settings: Settings, viewer: Viewer, ai_id: int) -> ProbeResult:
    """Test a stored connection: read it in a short transaction, then probe with none open."""
    with maker() as session:
        target = connection_target(session, settings, viewer, ai_id)
    return probe(target, settings)
