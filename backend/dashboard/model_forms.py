"""A model and its persona in domain terms, for the dashboard's Models page: the list of
models and of connections by field name, the form's values by parameter name, each
parameter's range, save (create or update, persona included), clone.

Everything is read from the catalog's rows and saved as its typed `ModelUpdate` /
`PersonaUpdate`: the page reads and passes field names, never seed-003 camelCase. Like
every service, nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from backend.accounts.viewer import Viewer
from backend.catalog import connections, model_admin
from backend.config import Settings
from backend.providers.params import PersonaParams
from db.models import ModelInfo

PARAM_NAMES: tuple[str, ...] = tuple(PersonaParams.model_fields)
JS_SAFE = 2**53 - 1  # the browser's number inputs hold at most this


# the columns of the models' and the connections' lists
MODEL_FIELDS = ("model_id", "model_name", "model_version", "ai_name", "link_type", "aiol_id", "disable", "is_default")
CONNECTION_FIELDS = ("ai_id", "ai_name", "ai_api", "ai_token", "protocol", "ai_type", "timeout", "shared")
LIST_LIMIT = 1000


def model_rows(session: Session, viewer: Viewer) -> list[dict[str, Any]]:
    """The models the viewer sees (at most LIST_LIMIT), one dict of MODEL_FIELDS each."""
    models, _ = model_admin.find_models(session, viewer, bare_limit=LIST_LIMIT)
    return [{name: getattr(m, name) for name in MODEL_FIELDS} | {"is_default": bool(m.is_default)} for m in models]


def connection_rows(session: Session, settings: Settings, viewer: Viewer) -> list[dict[str, Any]]:
    """The connections the viewer sees, keys masked, one dict of CONNECTION_FIELDS each."""
    found, _ = connections.find_connections(session, viewer, bare_limit=LIST_LIMIT)
    return [
        {name: getattr(c, name) for name in CONNECTION_FIELDS if name not in ("ai_token", "shared")}
        | {"ai_token": connections.masked_token(settings, c), "shared": connections.is_shared(c)}
        for c in found
    ]


@dataclass(frozen=True)
class ParamBounds:
    """How a persona parameter is entered: int or float, lowest and highest (None: open)."""

    kind: type
    low: float | None
    high: float | None


def param_bounds(name: str) -> ParamBounds:
    """The range of a persona parameter, from PersonaParams' field metadata (a `gt` bound
    becomes the next value above it); int bounds are clamped to what a browser can hold."""
    info = PersonaParams.model_fields[name]
    kind = int if "int" in str(info.annotation) else float
    low = high = None
    for rule in info.metadata:
        if getattr(rule, "ge", None) is not None:
            low = rule.ge
        if getattr(rule, "gt", None) is not None:
            low = rule.gt + (1 if kind is int else 1e-6)
        if getattr(rule, "le", None) is not None:
            high = rule.le
    if kind is int:
        low = None if low is None else max(int(low), -JS_SAFE)
        high = None if high is None else min(int(high), JS_SAFE)
    return ParamBounds(kind, low, high)


@dataclass(frozen=True)
class ModelForm:
    """A model as its form shows it (`model_id` None: a new model)."""

    model_id: int | None = None
    model_name: str = ""
    model_version: str | None = None
    ai_name: str | None = None
    link_type: int = 0
    aiol_id: int | None = None
    description: str | None = None
    disabled: bool = False
    user_id: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(PARAM_NAMES))
    examples: list[tuple[str, str]] = field(default_factory=list)


def model_form(session: Session, settings: Settings, viewer: Viewer, model_id: int) -> ModelForm:
    """The model's current values (404 for a model the viewer may not see)."""
    model = model_admin.get_model(session, viewer, model_id)
    persona = model.model_file
    return ModelForm(
        model_id=model.model_id,
        model_name=model.model_name,
        model_version=model.model_version,
        ai_name=model.ai_name,
        link_type=int(model.link_type or 0),
        aiol_id=model.aiol_id,
        description=model.description,
        disabled=bool(model.disable),
        user_id=model.user_id,
        system=persona.system if persona else None,
        params=model_admin.stored_params(persona) if persona else dict.fromkeys(PARAM_NAMES),
        examples=[(e.user_message, e.model_message) for e in persona.examples] if persona else [],
    )


def _set_persona(
    session: Session,
    viewer: Viewer,
    model_id: int,
    system: str | None,
    params: dict[str, Any],
    examples: list[tuple[str, str]],
) -> None:
    update = model_admin.PersonaUpdate(model_id=model_id, system=system, params=params, examples=examples)
    model_admin.update_persona(session, viewer, update)


def save_model(
    session: Session,
    viewer: Viewer,
    model_id: int | None,
    *,
    model_name: str,
    ai_name: str,
    link_type: int,
    description: str | None,
    model_version: str | None,
    aiol_id: int | None,
    system: str | None,
    params: dict[str, Any],
    examples: list[tuple[str, str]],
) -> ModelInfo:
    """Create (`model_id` None) or update a model, then set its whole persona: the system
    prompt, every parameter in `params` (None: the backend's default), the examples."""
    fields: dict[str, Any] = dict(
        model_name=model_name,
        ai_name=ai_name,
        link_type=link_type,
        description=description,
        model_version=model_version,
        aiol_id=aiol_id,
    )
    if model_id:
        model = model_admin.update_model(session, viewer, model_id, model_admin.ModelUpdate(**fields))
    else:
        model = model_admin.create_model(session, viewer, **fields)
    _set_persona(session, viewer, model.model_id, system, params, examples)
    return model


def clone_model(session: Session, settings: Settings, viewer: Viewer, model_id: int, *, name: str) -> ModelInfo:
    """A new model named `name` with the source's fields, owner, persona and examples."""
    source = model_form(session, settings, viewer, model_id)
    copy = model_admin.create_model(
        session,
        viewer,
        model_name=name,
        ai_name=source.ai_name,
        link_type=source.link_type,
        description=source.description,
        model_version=source.model_version,
        aiol_id=source.aiol_id,
        user_id=source.user_id,
    )
    _set_persona(session, viewer, copy.model_id, source.system, source.params, source.examples)
    return copy
