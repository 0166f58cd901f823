"""Models and personas (seed-003 `model_info`, `model_file`, `model_file_egmessage`).

A model is a persona (system prompt, sampling parameters, few-shot examples) over a base
model (`aiName`), local (linkType 0) or online through a connection (linkType 1).
Ownership: a user's model is theirs; a model with no user is shared — every user sees it,
only admins change it. Another user's model answers 404.

Creating a model creates its empty persona in the same transaction; deleting a model
deletes its persona and examples; a persona update range-checks every parameter with
`PersonaParams` and replaces the example list as a whole — one bad value and nothing
changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from backend.accounts import apikeys
from backend.accounts.changes import Change, save_changes
from backend.accounts.viewer import (
    Page,
    Viewer,
    audit_admin_change,
    bad_request,
    created_range,
    escape_like,
    flush_unique,
    name_taken,
    not_found,
    optional_text,
    required_text,
    run_listing,
)
from backend.catalog import connections
from backend.config import Settings
from backend.errors import ServiceError
from backend.providers.params import PersonaParams
from db.models import ModelAiOnline, ModelFile, ModelFileEgMessage, ModelInfo, User

TEXT_MAX = 16000  # a MySQL TEXT holds 65,535 bytes: 16,000 four-byte characters
MAX_EXAMPLES = 100

# PersonaParams fields -> the document's camelCase names (with its `mirostatEat` typo).
CAMEL_OF: dict[str, str] = {
    "mirostat": "mirostat",
    "mirostat_eta": "mirostatEat",
    "mirostat_tau": "mirostatTau",
    "num_ctx": "numCtx",
    "repeat_last_n": "repeatLastN",
    "repeat_penalty": "repeatPenalty",
    "temperature": "temperature",
    "seed": "seed",
    "stop": "stop",
    "tfs_z": "tfsZ",
    "num_predict": "numPredict",
    "top_p": "topP",
    "min_p": "minP",
    "top_k": "topK",
}

# --- ownership ---------------------------------------------------------------------------


def base_model_name(model: ModelInfo) -> str | None:
    if model.base_model_name:
        return model.base_model_name
    if model.link_type == 1 and model.ai_online is not None:
        return model.ai_online.ai_name
    return model.localmodel_name or model.ai_name


def _visible(query, viewer: Viewer):
    if viewer.is_admin:
        return query
    return query.where(or_(ModelInfo.user_id == viewer.user_id, ModelInfo.user_id.is_(None)))


def get_model(session: Session, viewer: Viewer, model_id: int, *, for_change: bool = False) -> ModelInfo:
    """The model if the viewer may see it (404 otherwise); with `for_change`, 403 on a
    shared model for a user."""
    model = session.get(ModelInfo, model_id) if 0 < model_id <= 2**31 - 1 else None
    if model is None or not (viewer.is_admin or model.user_id in (None, viewer.user_id)):
        raise not_found("model", model_id)
    if for_change and not viewer.is_admin and model.user_id != viewer.user_id:
        raise ServiceError("PERMISSION_NOT_ALLOW", "shared models are managed by admins", 403)
    return model


def stored_params(mf: ModelFile) -> dict[str, Any]:
    """The persona's sampling parameters by PersonaParams name (a stored stop that no longer
    reads as a list is None)."""
    try:
        return PersonaParams.from_model_file(mf).model_dump()
    except ValidationError:
        return {name: getattr(mf, name) for name in PersonaParams.model_fields if name != "stop"} | {"stop": None}


@dataclass(frozen=True)
class ModelDetail:
    """One model as its detail shows it: the model (with its persona), its connection when
    it is online, and a browser key of the user's for it (see model_detail)."""

    model: ModelInfo
    connection: ModelAiOnline | None = None
    browser_key: str | None = None


def model_detail(
    session: Session, settings: Settings, viewer: Viewer, model_id: int, *, browser_key: bool = False
) -> ModelDetail:
    """The model with its persona and, when online, its connection.

    With `browser_key`, a user asking about an online model also gets a fresh browser key of
    theirs for this model (apikeys.mint_browser_key): the StrangeLoop frontend posts its chat
    to the answer's `aiApi` (Meteor's own /v1 chat URL) with it, so it goes through Meteor and
    is charged to the user; the provider's address and key never reach the user's browser.
    The caller commits."""
    model = get_model(session, viewer, model_id)
    conn = model.ai_online if model.link_type == 1 else None
    key = None
    if conn is not None and not viewer.is_admin and browser_key:
        key = apikeys.mint_browser_key(
            session, user_id=str(viewer.user_id), model=model, minutes=settings.browser_key_minutes
        )
    return ModelDetail(model, conn, key)


# --- queries -----------------------------------------------------------------------------


def find_models(
    session: Session,
    viewer: Viewer,
    *,
    model_name: str | None = None,
    ai_name: str | None = None,
    created_start: str | None = None,
    created_end: str | None = None,
    user_id: str | None = None,
    link_type: int | None = None,
    disable: int | None = None,
    page: Page | None = None,
    bare_limit: int = 1000,
) -> tuple[list[ModelInfo], int | None]:
    """The models the viewer may see (their own and the shared ones; admins: all), oldest
    first, filtered by any subset of modelName (substring), aiName, an inclusive created
    range, userId, linkType and disable; and, when paged, their total."""
    query = _visible(select(ModelInfo), viewer)
    if model_name:
        query = query.where(ModelInfo.model_name.ilike(f"%{escape_like(model_name)}%", escape="\\"))
    if ai_name:
        query = query.where(ModelInfo.ai_name == ai_name)
    if user_id:
        query = query.where(ModelInfo.user_id == user_id)
    if link_type is not None:
        query = query.where(ModelInfo.link_type == link_type)
    if disable is not None:
        query = query.where(ModelInfo.disable == disable)
    query = query.where(*created_range(ModelInfo.created_time, created_start, created_end))
    # oldest first: the StrangeLoop frontend opens the last card as the model it just created
    return run_listing(session, query.order_by(ModelInfo.model_id.asc()), page, bare_limit=bare_limit)


# --- models ------------------------------------------------------------------------------


def _flag(value: Any, field: str) -> int:
    if value not in (0, 1):
        raise bad_request(f"{field} must be 0 or 1")
    return int(value)


def _duplicate(name: str) -> ServiceError:
    return ServiceError("APP_QUERY_METHOD_ERROR", f"a model named {name!r} already exists", 409)


def _name_taken(session: Session, name: str, exclude: int | None = None) -> bool:
    return name_taken(session, ModelInfo.model_name, ModelInfo.model_id, name, exclude)


def _connection_for(session: Session, viewer: Viewer, aiol_id: Any) -> int:
    if not isinstance(aiol_id, int) or isinstance(aiol_id, bool):
        raise bad_request("aiolId must be an online model id")
    return connections.get_connection(session, viewer, aiol_id).ai_id


def _connection_named(session: Session, viewer: Viewer, ai_name: str) -> int | None:
    conn = connections.find_by_name(session, viewer, ai_name)
    return None if conn is None else conn.ai_id


def create_model(
    session: Session,
    viewer: Viewer,
    *,
    model_name: str | None,
    ai_name: str | None,
    link_type: int | None = None,
    description: str | None = None,
    model_version: str | None = None,
    disable: int | None = None,
    aiol_id: int | None = None,
    user_id: str | int | None = None,
    localmodel_name: str | None = None,
    ollama_model_name: str | None = None,
    base_model_name: str | None = None,
) -> ModelInfo:
    """A new model and its empty persona, in the caller's transaction. A user's model is
    theirs; an admin's is shared unless the admin names a `userId`. modelName is unique
    (409). An online model is linked to `aiolId`, or else to the connection whose aiName
    equals the model's aiName, when the viewer may use one.

    The StrangeLoop frontend never sends `aiName`: it is then the linked connection's aiName
    (`aiolId`), or `localmodelName` for a local model; only a body with none of the three is
    a 400. `localmodelName`, `ollamaModelName` and `baseModelName` are stored as given."""
    name = required_text(model_name, "modelName", 50)
    link = 0 if link_type is None else _flag(link_type, "linkType")
    local = optional_text(localmodel_name, "localmodelName", 100)
    ollama = optional_text(ollama_model_name, "ollamaModelName", 100)
    shown_base = optional_text(base_model_name, "baseModelName", 100)
    connection: ModelAiOnline | None = None
    if aiol_id is not None:
        _connection_for(session, viewer, aiol_id)
        connection = session.get(ModelAiOnline, aiol_id)
    base = optional_text(ai_name, "aiName", 50)
    if base is None:
        if link == 1 and connection is not None:
            base = connection.ai_name
        elif local is not None:
            base = required_text(local, "localmodelName", 50)
        elif connection is not None:
            base = connection.ai_name
        else:
            raise bad_request("aiName is required (or aiolId for an online model, localmodelName for a local one)")
    owner: str | None = viewer.user_id
    if viewer.is_admin:
        owner = None
        if user_id not in (None, ""):
            if session.get(User, str(user_id)) is None:
                raise not_found("user", user_id)
            owner = str(user_id)
    if connection is not None:
        connection_id: int | None = connection.ai_id
    else:
        connection_id = _connection_named(session, viewer, base) if link == 1 else None
    if _name_taken(session, name):
        raise _duplicate(name)
    persona = ModelFile()
    session.add(persona)
    session.flush()
    model = ModelInfo(
        model_name=name,
        model_version=optional_text(model_version, "modelVersion", 50),
        model_file_id=persona.model_file_id,
        disable=0 if disable is None else _flag(disable, "disable"),
        user_id=owner,
        link_type=link,
        description=optional_text(description, "description", 500),
        aiol_id=connection_id,
        ai_name=base,
        localmodel_name=local,
        ollama_model_name=ollama,
        base_model_name=shown_base,
        created_by=viewer.stamp,
    )
    session.add(model)
    flush_unique(session, _duplicate(name))
    audit_admin_change(session, viewer, "add_model", "model", model.model_id, name=name, link_type=link)
    return model


class ModelUpdate(BaseModel):
    """The fields of a model to change (only those set). None clears an optional text or
    the connection, and keeps linkType and disable; modelName and aiName cannot be cleared."""

    model_name: str | None = None
    ai_name: str | None = None
    link_type: int | None = None
    disable: int | None = None
    description: str | None = None
    model_version: str | None = None
    aiol_id: int | None = None
    # the StrangeLoop frontend's fields
    localmodel_name: str | None = None
    ollama_model_name: str | None = None
    base_model_name: str | None = None


def update_model(session: Session, viewer: Viewer, model_id: int, update: ModelUpdate) -> ModelInfo:
    """Change the fields `update` was given, of a model the viewer owns (admins: any). An
    online model given no connection is linked to the one its aiName names, if any."""
    model = get_model(session, viewer, model_id, for_change=True)

    def unique_name(value: Any) -> str:
        name = required_text(value, "modelName", 50)
        if _name_taken(session, name, exclude=model.model_id):
            raise _duplicate(name)
        return name

    rules = {
        "localmodel_name": Change("localmodelName", lambda v: optional_text(v, "localmodelName", 100)),
        "ollama_model_name": Change("ollamaModelName", lambda v: optional_text(v, "ollamaModelName", 100)),
        "base_model_name": Change("baseModelName", lambda v: optional_text(v, "baseModelName", 100)),
        "model_name": Change("modelName", unique_name),
        "ai_name": Change("aiName", lambda v: required_text(v, "aiName", 50)),
        "link_type": Change.unless_none("linkType", lambda v: _flag(v, "linkType")),
        "disable": Change.unless_none("disable", lambda v: _flag(v, "disable")),
        "description": Change("description", lambda v: optional_text(v, "description", 500)),
        "model_version": Change("modelVersion", lambda v: optional_text(v, "modelVersion", 50)),
        "aiol_id": Change("aiolId", lambda v: None if v is None else _connection_for(session, viewer, v)),
    }

    def link_by_name() -> None:  # an online model given no connection: the one its aiName names
        if "aiol_id" in update.model_fields_set:
            return
        if model.link_type == 1 and model.aiol_id is None and model.ai_name:
            model.aiol_id = _connection_named(session, viewer, model.ai_name)

    save_changes(
        session,
        viewer,
        model,
        update,
        rules,
        duplicate=lambda: _duplicate(model.model_name),
        audit=("modify_model", "model", model.model_id),
        then=link_by_name,
    )
    return model


def delete_models(session: Session, viewer: Viewer, ids: list[int]) -> int:
    """Delete these models with their personas and examples (all or nothing)."""
    models = [get_model(session, viewer, model_id, for_change=True) for model_id in ids]
    file_ids = [m.model_file_id for m in models if m.model_file_id is not None]
    # a persona shared by a model that stays must stay too
    kept = set(
        session.scalars(
            select(ModelInfo.model_file_id).where(ModelInfo.model_file_id.in_(file_ids), ModelInfo.model_id.notin_(ids))
        )
    )
    file_ids = [f for f in file_ids if f not in kept]
    session.execute(delete(ModelInfo).where(ModelInfo.model_id.in_(ids)).execution_options(synchronize_session=False))
    if file_ids:
        session.execute(
            delete(ModelFileEgMessage)
            .where(ModelFileEgMessage.model_file_id.in_(file_ids))
            .execution_options(synchronize_session=False)
        )
        session.execute(
            delete(ModelFile).where(ModelFile.model_file_id.in_(file_ids)).execution_options(synchronize_session=False)
        )
    audit_admin_change(
        session, viewer, "delete_models", "model", ",".join(map(str, ids)), names=[m.model_name for m in models]
    )
    return len(ids)


# --- personas ----------------------------------------------------------------------------


class PersonaUpdate(BaseModel):
    """A persona update: the persona of `model_file_id` (or else of `model_id`); the
    parameters given, by PersonaParams name (absent ones keep their value, None clears one);
    the system prompt when set (None or "" clears it); the example list when set (it
    replaces the stored one as a whole)."""

    model_file_id: int | None = None
    model_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    system: str | None = None
    examples: list[tuple[str, str]] | None = None


def _persona_owner(session: Session, viewer: Viewer, update: PersonaUpdate) -> tuple[ModelInfo, ModelFile]:
    """The model whose persona the update names (by model_file_id, else model_id)."""
    if update.model_file_id is not None:
        file_id = update.model_file_id
        model = session.scalars(
            select(ModelInfo).where(ModelInfo.model_file_id == file_id).order_by(ModelInfo.model_id).limit(1)
        ).first()
        if model is None:
            raise not_found("persona", file_id)
        model = get_model(session, viewer, model.model_id, for_change=True)
    elif update.model_id is not None:
        model = get_model(session, viewer, update.model_id, for_change=True)
    else:
        raise bad_request("modelFileId (or modelId) is required")
    persona = model.model_file
    if persona is None:
        persona = ModelFile()
        session.add(persona)
        session.flush()
        model.model_file_id = persona.model_file_id
    return model, persona


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(x) for x in err.get("loc", ())]
        field = CAMEL_OF.get(loc[0], loc[0]) if loc else "modelFile"
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid persona: " + "; ".join(parts)


def check_example(index: int, field: str, value: str) -> None:
    """One message of a few-shot example: not blank, at most TEXT_MAX characters (400)."""
    if not value.strip():
        raise bad_request(f"modelFileEmessageList[{index}].{field} is required")
    if len(value) > TEXT_MAX:
        raise bad_request(f"modelFileEmessageList[{index}].{field} must be at most {TEXT_MAX} characters")


def _check_examples(examples: list[tuple[str, str]]) -> None:
    if len(examples) > MAX_EXAMPLES:
        raise bad_request(f"at most {MAX_EXAMPLES} examples")
    for index, (user_message, model_message) in enumerate(examples):
        check_example(index, "userMessage", user_message)
        check_example(index, "modelMessage", model_message)


def update_persona(session: Session, viewer: Viewer, update: PersonaUpdate) -> ModelInfo:
    """Set the parameters `update` gives (merged with the stored ones and range-checked by
    PersonaParams), the system prompt when set, and the example list when set. Everything
    is checked before anything is written."""
    model, persona = _persona_owner(session, viewer, update)
    merged = stored_params(persona) | update.params
    try:
        params = PersonaParams.model_validate(merged)
    except ValidationError as exc:
        raise bad_request(_describe(exc)) from None
    system_set = "system" in update.model_fields_set
    if update.system is not None and len(update.system) > TEXT_MAX:
        raise bad_request(f"system must be at most {TEXT_MAX} characters")
    if update.examples is not None:
        _check_examples(update.examples)

    params.apply_to(persona)
    if system_set:
        persona.system = update.system or None
    if update.examples is not None:
        session.execute(
            delete(ModelFileEgMessage)
            .where(ModelFileEgMessage.model_file_id == persona.model_file_id)
            .execution_options(synchronize_session=False)
        )
        session.expire(persona, ["examples"])
        for user_message, model_message in update.examples:
            session.add(
                ModelFileEgMessage(
                    user_message=user_message, model_message=model_message, model_file_id=persona.model_file_id
                )
            )
    model.updated_by = viewer.stamp
    model.updated_time = datetime.now(UTC)
    session.flush()
    audit_admin_change(
        session,
        viewer,
        "modify_persona",
        "model",
        model.model_id,
        parameters=sorted(update.params),
        system=system_set,
        examples=None if update.examples is None else len(update.examples),
    )
    return model
