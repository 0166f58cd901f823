"""Seed-003 models, personas and online connections.

| path                                   | does                                                  |
|----------------------------------------|-------------------------------------------------------|
| GET    /model/manage                   | list models (own + shared; admins all)                |
| GET    /model/manage/{modelId}         | one model with modelFile (+ examples), modelAiOnline  |
| POST   /model/manage                   | create a model and its empty persona                  |
| PUT    /model/manage                   | change a model                                        |
| PUT    /model/manage/detail            | change the persona; replaces the example list         |
| DELETE /model/manage/{ids}             | delete models with their personas and examples        |
| GET    /model/ol/manage                | list online connections (the document says PUT)      |
| PUT    /model/ol/manage                | change a connection; a body with createdTimeStart /   |
|                                        | createdTimeEnd is the document's PUT list instead     |
| GET    /model/ol/manage/{aiId}         | one connection                                        |
| POST   /model/ol/manage                | create a connection                                   |
| DELETE /model/ol/manage/{ids}          | delete connections                                    |
| POST   /model/ol/manage/{aiId}/test    | test a stored connection: list upstream models        |
| POST   /model/ol/manage/test           | test an unsaved connection (aiApi, aiToken, protocol) |

The document's trailing-slash spellings (`/model/manage/`, `/model/ol/manage/`) are served
too. Lists are bare unless pageNum / pageSize is given (`{total, items}`). aiToken is
never returned in clear: every answer shows it masked.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from backend.accounts.viewer import make_page, parse_ids, shape_listing
from backend.api.bounds import OptIntQuery
from backend.api.conversations import BARE_LIST_LIMIT, ViewerDep, parse_body
from backend.api.deps import SessionDep, SettingsDep
from backend.api.envelope import success
from backend.api.schemas import json_body
from backend.api.schemas.seed003 import (
    ConnectionFilter,
    ConnectionIn,
    ConnectionUpdateIn,
    ModelIn,
    ModelUpdateIn,
    PageNumQuery,
    PageSizeQuery,
    ProbeIn,
    connection_public,
    errors,
    model_detail_public,
    model_public,
    persona_schema,
    persona_update,
    probe_public,
)
from backend.catalog import connections, model_admin
from backend.config import Settings

router = APIRouter(tags=["seed-003 models"], responses=errors(400, 401, 403, 404, 405, 409, 413))

# --- models ------------------------------------------------------------------------------


@router.get("/model/manage")
@router.get("/model/manage/", include_in_schema=False)
def list_models(
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    modelName: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803 - the document's names
    aiName: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803
    createdTimeStart: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    createdTimeEnd: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    userId: Annotated[str | None, Query(max_length=32)] = None,  # noqa: N803
    linkType: Annotated[int | None, Query(ge=0, le=1)] = None,  # noqa: N803
    disable: Annotated[int | None, Query(ge=0, le=1)] = None,
    pageNum: PageNumQuery = None,  # noqa: N803
    pageSize: PageSizeQuery = None,  # noqa: N803
) -> dict[str, Any]:
    page = make_page(pageNum, pageSize, max_size=settings.query_page_size_max)
    found, total = model_admin.find_models(
        session,
        viewer,
        model_name=modelName,
        ai_name=aiName,
        created_start=createdTimeStart,
        created_end=createdTimeEnd,
        user_id=userId,
        link_type=linkType,
        disable=disable,
        page=page,
        bare_limit=BARE_LIST_LIMIT,
    )
    return success(shape_listing([model_public(m) for m in found], total))


@router.put("/model/manage/detail", openapi_extra=json_body(persona_schema()))
@router.put("/model/manage/detail/", include_in_schema=False)
def update_persona(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    model = model_admin.update_persona(session, viewer, persona_update(body))
    session.commit()
    return success({"modelId": model.model_id, "modelFileId": model.model_file_id})


def chat_url(request: Request, settings: Settings) -> str:
    """Meteor's own OpenAI-compatible chat endpoint, as the caller's browser reaches it."""
    base = settings.public_api_url or str(request.base_url)
    return base.rstrip("/") + "/v1/chat/completions"


@router.get("/model/manage/{model_id}")
def model_detail(
    model_id: int, request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep
) -> dict[str, Any]:
    """One model. For a user, an online model's `modelAiOnline` carries Meteor's /v1 chat URL and
    a short-lived key of the user's for this model, never the provider's (model_detail_public)."""
    detail = model_admin.model_detail(session, settings, viewer, model_id, browser_key=True)
    session.commit()  # the browser key
    return success(model_detail_public(settings, detail, chat_url=chat_url(request, settings)))


@router.post("/model/manage", openapi_extra=json_body(ModelIn))
@router.post("/model/manage/", include_in_schema=False)
def create_model(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    data = parse_body(ModelIn, body)
    model = model_admin.create_model(
        session,
        viewer,
        model_name=data.model_name,
        ai_name=data.ai_name,
        link_type=data.link_type,
        description=data.description,
        model_version=data.model_version,
        disable=data.disable,
        aiol_id=data.aiol_id if data.aiol_id is not None else data.ai_id,
        user_id=data.user_id,
        localmodel_name=data.localmodel_name,
        ollama_model_name=data.ollama_model_name,
        base_model_name=data.base_model_name,
    )
    session.commit()
    return success(model_public(model))


@router.put("/model/manage", openapi_extra=json_body(ModelUpdateIn))
@router.put("/model/manage/", include_in_schema=False)
def update_model(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    data = parse_body(ModelUpdateIn, body)
    model = model_admin.update_model(session, viewer, data.model_id, data.changes())
    session.commit()
    return success(model_public(model))


@router.delete("/model/manage/{ids}")
def delete_models(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model_admin.delete_models(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)


# --- online connections ------------------------------------------------------------------


def _list_connections(session, settings, viewer, page_num=None, page_size=None, **filters) -> dict[str, Any]:
    page = make_page(page_num, page_size, max_size=settings.query_page_size_max)
    found, total = connections.find_connections(session, viewer, page=page, bare_limit=BARE_LIST_LIMIT, **filters)
    return success(shape_listing([connection_public(settings, c) for c in found], total))


@router.get("/model/ol/manage")
@router.get("/model/ol/manage/", include_in_schema=False)
def list_connections(
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    aiId: OptIntQuery = None,  # noqa: N803 - the document's names
    aiName: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803
    aiVersion: Annotated[str | None, Query(max_length=50)] = None,  # noqa: N803
    aiType: OptIntQuery = None,  # noqa: N803
    createdTimeStart: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    createdTimeEnd: Annotated[str | None, Query(max_length=40)] = None,  # noqa: N803
    pageNum: PageNumQuery = None,  # noqa: N803
    pageSize: PageSizeQuery = None,  # noqa: N803
) -> dict[str, Any]:
    return _list_connections(
        session,
        settings,
        viewer,
        pageNum,
        pageSize,
        ai_id=aiId,
        ai_name=aiName,
        ai_version=aiVersion,
        ai_type=aiType,
        created_start=createdTimeStart,
        created_end=createdTimeEnd,
    )


@router.put(
    "/model/ol/manage",
    openapi_extra=json_body(ConnectionUpdateIn, ConnectionFilter, description="an update, or a list (createdTime*)"),
)
@router.put("/model/ol/manage/", include_in_schema=False)
def update_connection(
    session: SessionDep, settings: SettingsDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """Change a connection — or, when the body carries createdTimeStart / createdTimeEnd
    (which no update has), list connections as the document's `PUT /model/ol/manage`."""
    if isinstance(body, dict) and ("createdTimeStart" in body or "createdTimeEnd" in body):
        f = parse_body(ConnectionFilter, body)
        return _list_connections(
            session,
            settings,
            viewer,
            f.pageNum,
            f.pageSize,
            ai_id=f.aiId,
            ai_name=f.aiName,
            ai_version=f.aiVersion,
            ai_type=f.aiType,
            created_start=f.createdTimeStart,
            created_end=f.createdTimeEnd,
        )
    data = parse_body(ConnectionUpdateIn, body)
    conn = connections.update_connection(session, settings, viewer, data.ai_id, data.changes())
    session.commit()
    return success(connection_public(settings, conn))


@router.post("/model/ol/manage", openapi_extra=json_body(ConnectionIn))
@router.post("/model/ol/manage/", include_in_schema=False)
def create_connection(
    session: SessionDep, settings: SettingsDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    data = parse_body(ConnectionIn, body)
    conn = connections.create_connection(
        session,
        settings,
        viewer,
        ai_name=data.ai_name,
        ai_api=data.ai_api,
        ai_token=data.ai_token,
        ai_version=data.ai_version,
        ai_type=data.ai_type,
        timeout=data.timeout if data.timeout is not None else data.time_out,
        protocol=data.protocol,
    )
    session.commit()
    return success(connection_public(settings, conn))


@router.post("/model/ol/manage/test", openapi_extra=json_body(ProbeIn))
def test_unsaved_connection(
    session: SessionDep, settings: SettingsDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    session.rollback()  # only the token check touched the database; hold nothing while probing
    data = parse_body(ProbeIn, body)
    protocol = connections.check_protocol(data.protocol) if data.protocol else connections.infer_protocol(data.ai_api)
    target = connections.ProbeTarget(
        ai_api=data.ai_api,
        protocol=protocol,
        timeout=float(data.timeout or connections.DEFAULT_TIMEOUT),
        token=data.ai_token,
        allow_private=viewer.is_admin,  # loopback / private addresses are for admins only
    )
    return success(probe_public(connections.probe(target, settings)))


@router.post("/model/ol/manage/{ai_id}/test")
def test_connection(ai_id: int, session: SessionDep, settings: SettingsDep, viewer: ViewerDep) -> dict[str, Any]:
    target = connections.connection_target(session, settings, viewer, ai_id)
    session.rollback()  # hold no transaction (on SQLite: no write lock) during the network call
    return success(probe_public(connections.probe(target, settings)))


@router.get("/model/ol/manage/{ai_id}")
def connection_detail(ai_id: int, session: SessionDep, settings: SettingsDep, viewer: ViewerDep) -> dict[str, Any]:
    return success(connection_public(settings, connections.get_connection(session, viewer, ai_id)))


@router.delete("/model/ol/manage/{ids}")
def delete_connections(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    connections.delete_connections(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)
