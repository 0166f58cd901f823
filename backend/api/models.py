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

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field

from backend.api.bounds import INT32_MAX, OptIntQuery
from backend.api.conversations import BARE_LIST_LIMIT, ViewerDep, given, parse_body
from backend.api.deps import SessionDep, SettingsDep
from backend.api.envelope import success
from backend.services import connections, model_admin
from backend.services.seed003 import bad_request, make_page, parse_ids, shape_listing

router = APIRouter(tags=["seed-003 models"])

Id = Annotated[int, Field(ge=0, le=INT32_MAX)]


# --- schemas -----------------------------------------------------------------------------


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model_name: Any = Field(default=None, alias="modelName")
    ai_name: Any = Field(default=None, alias="aiName")
    link_type: int | None = Field(default=None, alias="linkType")
    description: Any = None
    model_version: Any = Field(default=None, alias="modelVersion")
    disable: int | None = None
    aiol_id: int | None = Field(default=None, alias="aiolId")
    ai_id: int | None = Field(default=None, alias="aiId")  # another spelling of aiolId
    user_id: str | int | None = Field(default=None, alias="userId")


class ModelUpdate(ModelIn):
    model_id: Id = Field(alias="modelId")


class ConnectionIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    ai_id: int | None = Field(default=None, alias="aiId")  # ignored on create
    ai_name: Any = Field(default=None, alias="aiName")
    ai_version: Any = Field(default=None, alias="aiVersion")
    ai_token: Any = Field(default=None, alias="aiToken")
    ai_api: Any = Field(default=None, alias="aiApi")
    ai_type: int | None = Field(default=None, alias="aiType")
    timeout: int | None = None
    time_out: int | None = Field(default=None, alias="timeOut")
    protocol: str | None = None


class ConnectionUpdate(ConnectionIn):
    ai_id: Id = Field(alias="aiId")


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
    pageNum: int | None = None,  # noqa: N803
    pageSize: int | None = None,  # noqa: N803
) -> dict[str, Any]:
    page = make_page(pageNum, pageSize, max_size=settings.query_page_size_max)
    items, total = model_admin.list_models(
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
    return success(shape_listing(items, total))


@router.put("/model/manage/detail")
@router.put("/model/manage/detail/", include_in_schema=False)
def update_persona(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = model_admin.update_persona(session, viewer, body)
    session.commit()
    return success({"modelId": model.model_id, "modelFileId": model.model_file_id})


@router.get("/model/manage/{model_id}")
def model_detail(model_id: int, session: SessionDep, settings: SettingsDep, viewer: ViewerDep) -> dict[str, Any]:
    return success(model_admin.model_detail(session, settings, viewer, model_id))


@router.post("/model/manage")
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
    )
    session.commit()
    return success(model_admin.model_public(model))


@router.put("/model/manage")
@router.put("/model/manage/", include_in_schema=False)
def update_model(session: SessionDep, viewer: ViewerDep, body: Annotated[Any, Body()] = None) -> dict[str, Any]:
    data = parse_body(ModelUpdate, body)
    changes = given(data, "model_name", "ai_name", "link_type", "disable", "description", "model_version", "aiol_id")
    if "aiol_id" not in changes and "ai_id" in data.model_fields_set:
        changes["aiol_id"] = data.ai_id
    model = model_admin.update_model(session, viewer, data.model_id, **changes)
    session.commit()
    return success(model_admin.model_public(model))


@router.delete("/model/manage/{ids}")
def delete_models(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model_admin.delete_models(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)


# --- online connections ------------------------------------------------------------------


def _list_connections(session, settings, viewer, page_num=None, page_size=None, **filters) -> dict[str, Any]:
    page = make_page(page_num, page_size, max_size=settings.query_page_size_max)
    items, total = connections.list_connections(
        session, settings, viewer, page=page, bare_limit=BARE_LIST_LIMIT, **filters
    )
    return success(shape_listing(items, total))


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
    pageNum: int | None = None,  # noqa: N803
    pageSize: int | None = None,  # noqa: N803
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


class ConnectionFilter(BaseModel):
    """The document's PUT list body."""

    model_config = ConfigDict(extra="ignore")

    aiId: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    aiName: Annotated[str, Field(max_length=50)] | None = None
    aiVersion: Annotated[str, Field(max_length=50)] | None = None
    aiType: Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)] | None = None
    createdTimeStart: Annotated[str, Field(max_length=40)] | None = None
    createdTimeEnd: Annotated[str, Field(max_length=40)] | None = None
    pageNum: int | None = None
    pageSize: int | None = None


@router.put("/model/ol/manage")
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
    data = parse_body(ConnectionUpdate, body)
    changes = given(data, "ai_name", "ai_version", "ai_token", "ai_api", "ai_type", "timeout", "protocol")
    if "timeout" not in changes and "time_out" in data.model_fields_set:
        changes["timeout"] = data.time_out
    conn = connections.update_connection(session, settings, viewer, data.ai_id, **changes)
    session.commit()
    return success(connections.connection_public(settings, conn))


@router.post("/model/ol/manage")
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
    return success(connections.connection_public(settings, conn))


class ProbeIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    ai_api: str = Field(alias="aiApi", max_length=500)
    ai_token: str | None = Field(default=None, alias="aiToken", max_length=500)
    protocol: str | None = None
    timeout: int | None = Field(default=None, ge=1, le=connections.MAX_TIMEOUT)


@router.post("/model/ol/manage/test")
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
    )
    return success(connections.probe(target, settings).public())


@router.post("/model/ol/manage/{ai_id}/test")
def test_connection(ai_id: int, session: SessionDep, settings: SettingsDep, viewer: ViewerDep) -> dict[str, Any]:
    target = connections.connection_target(session, settings, viewer, ai_id)
    session.rollback()  # hold no transaction (on SQLite: no write lock) during the network call
    return success(connections.probe(target, settings).public())


@router.get("/model/ol/manage/{ai_id}")
def connection_detail(ai_id: int, session: SessionDep, settings: SettingsDep, viewer: ViewerDep) -> dict[str, Any]:
    return success(connections.connection_public(settings, connections.get_connection(session, viewer, ai_id)))


@router.delete("/model/ol/manage/{ids}")
def delete_connections(ids: str, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    connections.delete_connections(session, viewer, parse_ids(ids))
    session.commit()
    return success(None)
