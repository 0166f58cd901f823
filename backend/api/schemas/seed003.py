"""Seed-003 request models and answers (`/model/...`, `/sys/...`): `{"code": 200, "message":
"Success", "data": ...}`, errors `{"code": <HTTP status>, "message": ..., "data": null}`.

Routes validate these with `parse_body` (backend/api/conversations.py): a route that decides
between two shapes by the body (`POST /model/message`, `PUT /model/ol/manage`) or answers
errors inside a 200 (`/sys/user/...`) cannot leave it to FastAPI; `json_body` documents the
same model. The limits are the services' (backend/accounts/viewer.py `optional_text`,
model_admin, connections, conversations): text is measured after stripping, blank means
absent; a wrong type, a longer text or a number out of range is a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from backend import security
from backend.accounts.viewer import bad_request, fmt
from backend.api.bounds import INT32_MAX
from backend.api.schemas import NewPasswordText, SignInPassword, documented, model_schema, sent_as
from backend.catalog import connections, model_admin
from backend.chat import conversations
from backend.config import Settings
from backend.providers.params import PersonaParams
from db.models import ModelAiOnline, ModelConversation, ModelFile, ModelInfo, ModelMessage


class Seed003Error(BaseModel):
    """`code` is the HTTP status (the StrangeLoop sign-in answers it with HTTP 200)."""

    code: int
    message: str
    data: None = None


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for seed-003 routes."""
    return documented(Seed003Error, *statuses)


def answers(model: type[BaseModel], *statuses: int, description: str = "success") -> dict[str, Any]:
    """Route keywords documenting a fixed answer (and these 4xx); the route's dict is sent
    as it is (`response_model=None`), unfiltered and in its order."""
    return {
        "response_model": None,
        "responses": {200: {"model": model, "description": description}, **errors(*statuses)},
    }


Id = Annotated[int, Field(ge=0, le=INT32_MAX)]
PAGE_NUM_MAX = 10**7  # backend/accounts/viewer.py make_page
PAGE_SIZE = "rows per page; more than METEOR_QUERY_PAGE_SIZE_MAX is cut to it"
PageNum = Annotated[int, Field(ge=1, le=PAGE_NUM_MAX)]
PageSize = Annotated[int, Field(ge=1, description=PAGE_SIZE)]
PageNumQuery = Annotated[int | None, Query(ge=1, le=PAGE_NUM_MAX)]
PageSizeQuery = Annotated[int | None, Query(ge=1, description=PAGE_SIZE)]


# optional texts of at most N characters after stripping
Text50 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None
Text100 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None
Text500 = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None


def _blank_is_none(value: Any) -> Any:
    """The StrangeLoop frontend sends `aiolId: ""` for a local model."""
    return None if isinstance(value, str) and not value.strip() else value


OptionalId = Annotated[int | None, BeforeValidator(_blank_is_none)]  # an unknown id is a 404
Flag = Annotated[int, Field(ge=0, le=1)] | None


# --- models and personas (backend/api/models.py) -----------------------------------------


class ModelIn(BaseModel):
    """A model. On create `modelName` is required, and `aiName` unless `aiolId` or
    `localmodelName` names the base (the service says which is missing)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model_name: Text50 = Field(default=None, alias="modelName")
    ai_name: Text50 = Field(default=None, alias="aiName")
    link_type: Flag = Field(default=None, alias="linkType")
    description: Text500 = None
    model_version: Text50 = Field(default=None, alias="modelVersion")
    disable: Flag = None
    aiol_id: OptionalId = Field(default=None, alias="aiolId")
    ai_id: OptionalId = Field(default=None, alias="aiId")  # another spelling of aiolId
    user_id: str | int | None = Field(default=None, alias="userId")  # admins only; an unknown one is a 404
    # the StrangeLoop frontend's fields
    localmodel_name: Text100 = Field(default=None, alias="localmodelName")
    ollama_model_name: Text100 = Field(default=None, alias="ollamaModelName")
    base_model_name: Text100 = Field(default=None, alias="baseModelName")


class ModelUpdateIn(ModelIn):
    """A model's change: the fields sent change (`aiId` counts as `aiolId` when that is absent)."""

    model_id: Id = Field(alias="modelId")

    def changes(self) -> model_admin.ModelUpdate:
        return sent_as(self, model_admin.ModelUpdate, aiol_id="ai_id")


class Example(BaseModel):
    user_message: Annotated[str, Field(min_length=1, max_length=model_admin.TEXT_MAX)] = Field(alias="userMessage")
    model_message: Annotated[str, Field(min_length=1, max_length=model_admin.TEXT_MAX)] = Field(alias="modelMessage")


class PersonaIn(BaseModel):
    """`PUT /model/manage/detail` (model_admin.update_persona validates it): the persona of
    `modelFileId` (or `modelId`); the sampling parameters (also nested in `modelFile`),
    `system`, and an example list that replaces the stored one (`modelFileEmessageList`, or
    the document's `modelFileEgMessageList`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model_file_id: Id | None = Field(default=None, alias="modelFileId")
    model_id: Id | None = Field(default=None, alias="modelId")
    system: Annotated[str, Field(max_length=model_admin.TEXT_MAX)] | None = None
    examples: Annotated[list[Example], Field(max_length=model_admin.MAX_EXAMPLES)] | None = Field(
        default=None, alias="modelFileEmessageList"
    )
    model_file: dict[str, Any] | None = Field(default=None, alias="modelFile")


def persona_schema() -> dict[str, Any]:
    """PersonaIn with the sampling parameters under their camelCase names."""
    schema = model_schema(PersonaIn)
    params = model_schema(PersonaParams)["properties"]
    schema["properties"].update({model_admin.CAMEL_OF[name]: spec for name, spec in params.items()})
    return schema


# Accepted persona keys: the camelCase names, `mirostatEta` (the spelling fixed), snake_case.
PERSONA_FIELDS: dict[str, str] = {camel: name for name, camel in model_admin.CAMEL_OF.items()}
PERSONA_FIELDS.update({name: name for name in model_admin.CAMEL_OF} | {"mirostatEta": "mirostat_eta"})
EXAMPLE_KEYS = ("modelFileEgmessageList", "modelFileEmessageList")  # the original code's, the document's


def _int_id(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise bad_request(f"{field} must be a number")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise bad_request(f"{field} must be a number")
    return value


def _persona_values(body: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    sources = [body]
    if isinstance(body.get("modelFile"), dict):
        sources.append(body["modelFile"])
    for source in sources:
        for key, value in source.items():
            name = PERSONA_FIELDS.get(key)
            if name is None or (key == "mirostatEta" and "mirostatEat" in source):
                continue  # both spellings sent: the document's (and the frontend's) mirostatEat wins
            if isinstance(value, str) and not value.strip() and name != "stop":
                value = None  # an empty form field means "the backend's default"
            values[name] = value
    return values


def _raw_examples(body: dict[str, Any], nested: dict[str, Any]) -> Any:
    """The example list a body carries, under either spelling (None when none).

    Both spellings in one body: `modelFileEgmessageList` wins, unless it is empty while
    `modelFileEmessageList` is not. That is the StrangeLoop frontend saving a persona: it
    deletes its own list from the object it sends and puts an empty one in its place, beside
    the unchanged copy of the stored examples it was answered — taking the empty list would
    delete every stored example on each save of a parameter."""
    found: dict[str, Any] = {}
    for key in EXAMPLE_KEYS:
        for source in (body, nested):
            if key in source and source[key] is not None:
                found.setdefault(key, source[key])
    original, document = found.get(EXAMPLE_KEYS[0]), found.get(EXAMPLE_KEYS[1])
    if original is None:
        return document
    if document is not None and original == [] and isinstance(document, list) and document:
        return document
    return original


def _examples(raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise bad_request("modelFileEmessageList must be a list")
    if len(raw) > model_admin.MAX_EXAMPLES:
        raise bad_request(f"at most {model_admin.MAX_EXAMPLES} examples")
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise bad_request(f"modelFileEmessageList[{index}] must be an object")
        user_message, model_message = item.get("userMessage"), item.get("modelMessage")
        for field, value in (("userMessage", user_message), ("modelMessage", model_message)):
            if not isinstance(value, str):
                raise bad_request(f"modelFileEmessageList[{index}].{field} is required")
            model_admin.check_example(index, field, value)
        pairs.append((str(user_message), str(model_message)))
    return pairs


def persona_update(body: Any) -> model_admin.PersonaUpdate:
    """A `PUT /model/manage/detail` body as the catalog's PersonaUpdate: the persona's id,
    the parameters under any of their spellings (top level or nested in `modelFile`; a blank
    string is None), `system` when present, the example list when present (either spelling,
    see _raw_examples). A `modelAiOnline` in the body is ignored (the original updated the
    connection from it; connections change at /model/ol/manage only)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    nested: dict[str, Any] = body["modelFile"] if isinstance(body.get("modelFile"), dict) else {}
    changes: dict[str, Any] = {"params": _persona_values(body)}
    file_ref = body.get("modelFileId", nested.get("modelFileId"))
    if file_ref is not None:
        changes["model_file_id"] = _int_id(file_ref, "modelFileId")
    elif body.get("modelId") is not None:
        changes["model_id"] = _int_id(body["modelId"], "modelId")
    for source in (nested, body):
        if "system" in source:
            changes["system"] = source["system"]
    if changes.get("system") is not None and not isinstance(changes["system"], str):
        raise bad_request("system must be a string")
    raw_examples = _raw_examples(body, nested)
    if raw_examples is not None:
        changes["examples"] = _examples(raw_examples)
    return model_admin.PersonaUpdate(**changes)


# --- online connections ------------------------------------------------------------------

Protocol = Annotated[
    str, Field(max_length=16, description="one of " + ", ".join(connections.PROTOCOLS) + " (any case)")
]
Timeout = Annotated[int, Field(ge=1, le=connections.MAX_TIMEOUT, description="seconds")]
AiType = Annotated[int, Field(ge=1, le=3, description="1 llm, 2 chat, 3 image")]


class ConnectionIn(BaseModel):
    """A connection. On create `aiName` and `aiApi` are required. `aiToken` is printable
    ASCII; a masked token (as answers show it) keeps the stored one."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    ai_id: int | None = Field(default=None, alias="aiId")  # ignored on create
    ai_name: Text50 = Field(default=None, alias="aiName")
    ai_version: Text50 = Field(default=None, alias="aiVersion")
    ai_token: Text500 = Field(default=None, alias="aiToken")
    ai_api: Text500 = Field(default=None, alias="aiApi")
    ai_type: AiType | None = Field(default=None, alias="aiType")
    timeout: Timeout | None = None
    time_out: Timeout | None = Field(default=None, alias="timeOut")
    protocol: Protocol | None = None


class ConnectionUpdateIn(ConnectionIn):
    """A connection's change: the fields sent change (`timeOut` counts as `timeout` when that is absent)."""

    ai_id: Id = Field(alias="aiId")

    def changes(self) -> connections.ConnectionUpdate:
        return sent_as(self, connections.ConnectionUpdate, timeout="time_out")


class ConnectionFilter(BaseModel):
    """The document's PUT list body (told from an update by createdTimeStart / createdTimeEnd)."""

    model_config = ConfigDict(extra="ignore")

    aiId: Id | None = None
    aiName: Annotated[str, Field(max_length=50)] | None = None
    aiVersion: Annotated[str, Field(max_length=50)] | None = None
    aiType: Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)] | None = None
    createdTimeStart: Annotated[str, Field(max_length=40)] | None = None
    createdTimeEnd: Annotated[str, Field(max_length=40)] | None = None
    pageNum: PageNum | None = None
    pageSize: PageSize | None = None


class ProbeIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    ai_api: str = Field(alias="aiApi", max_length=500)
    ai_token: str | None = Field(default=None, alias="aiToken", max_length=500)
    protocol: Protocol | None = None
    timeout: Timeout | None = None


# --- conversations and messages (backend/api/conversations.py) ---------------------------

UserRef = str | int | None  # an unknown user is a 404


class ConversationIn(BaseModel):
    """`id` and `userId` from a user are ignored on create (ids are made by the server);
    an admin names the owner with `userId`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: Id | None = None
    user_id: UserRef = Field(default=None, alias="userId")
    title: Annotated[str, Field(max_length=conversations.TITLE_MAX)] | None = None
    ai_name: Annotated[str, Field(max_length=conversations.AI_NAME_MAX)] | None = Field(default=None, alias="aiName")
    model_id: Id | None = Field(default=None, alias="modelId")
    model_info_id: Id | None = Field(default=None, alias="modelInfoId")  # the original code's name

    @property
    def model(self) -> int | None:
        return self.model_id if self.model_id is not None else self.model_info_id


class ConversationUpdateIn(ConversationIn):
    """A conversation's change: its title and / or aiName, when sent."""

    id: Id

    def changes(self) -> conversations.ConversationUpdate:
        return sent_as(self, conversations.ConversationUpdate)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: Id | None = None  # ignored: the server makes ids
    conversation_id: Id = Field(alias="conversationId")
    role: Annotated[str, Field(max_length=conversations.ROLE_MAX)] | None = None  # absent or "": user
    content: str | None = None
    prompt_tokens: Id | None = Field(default=None, alias="promptTokens")
    completion_tokens: Id | None = Field(default=None, alias="completionTokens")


# --- StrangeLoop's sign-in (backend/api/sysuser.py) --------------------------------------

Account = Annotated[str, Field(min_length=1, max_length=64)]


class SignInIn(BaseModel):
    """`/sys/user/login`: what a sign-in may try (imported accounts may have shorter passwords)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    account: Account
    password: SignInPassword


class SignUpIn(BaseModel):
    """`/sys/user/create`: the account rules of backend/accounts/service.py."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    account: Account
    password: NewPasswordText
    password_again: Annotated[str, Field(max_length=security.BCRYPT_MAX_BYTES)] | None = Field(
        default=None, alias="passwordAgain"
    )


class SignInAnswer(BaseModel):
    """`/sys/user/login` and `/create`: success (`code` 200, `data` the access token, or null
    for create) or an error, also with HTTP 200: `code` its status, `data` null."""

    code: int
    message: str
    data: str | None


class SignedInUser(BaseModel):
    id: str
    account: str
    name: str
    email: str | None
    academy: str | None
    disable: Literal[0, 1]
    tokens: int
    picTimes: int  # noqa: N815 - the wire names
    createTime: str | None  # noqa: N815


class NowLoginUserAnswer(BaseModel):
    code: Literal[200] = 200
    message: str
    data: SignedInUser


# --- answers: the catalog's rows in the document's camelCase (backend/api/models.py) -----


def model_public(m: ModelInfo) -> dict[str, Any]:
    return {
        "modelId": m.model_id,
        "modelName": m.model_name,
        "modelVersion": m.model_version,
        "modelFileId": m.model_file_id,
        "disable": m.disable,
        "description": m.description,
        "linkType": m.link_type,
        "aiName": m.ai_name,
        "aiolId": m.aiol_id,
        # the StrangeLoop frontend's fields
        "localmodelName": m.localmodel_name,
        "ollamaModelName": m.ollama_model_name,
        "baseModelName": model_admin.base_model_name(m),
        "userId": m.user_id,
        "isDefault": bool(m.is_default),
        "createdTime": fmt(m.created_time),
        "createdBy": m.created_by,
        "updatedTime": fmt(m.updated_time),
        "updatedBy": m.updated_by,
        # the document's example spells these two without the "d"
        "updateTime": fmt(m.updated_time),
        "updateBy": m.updated_by,
    }


def persona_public(mf: ModelFile | None, model_file_id: int | None = None) -> dict[str, Any]:
    """The document's `modelFile` object, with the examples as `modelFileEmessageList` (the
    document) and `modelFileEgmessageList` (the original code)."""
    params = model_admin.stored_params(mf) if mf is not None else dict.fromkeys(PersonaParams.model_fields)
    body: dict[str, Any] = {
        "system": mf.system if mf else None,
        "modelFileId": mf.model_file_id if mf else model_file_id,
    }
    for name, value in params.items():
        body[model_admin.CAMEL_OF.get(name, name)] = value
    # No `mirostatEta` beside `mirostatEat`: the StrangeLoop frontend sends every field back,
    # and a stale second spelling would overwrite the user's edit of the first.
    examples = [
        {
            "messageId": e.message_id,
            "userMessage": e.user_message,
            "modelMessage": e.model_message,
            "modelFileId": e.model_file_id,
        }
        for e in (mf.examples if mf else [])
    ]
    body["modelFileEmessageList"] = examples  # the document's spelling
    body["modelFileEgmessageList"] = [dict(e) for e in examples]  # the original code's
    return body


def connection_public(settings: Settings, conn: ModelAiOnline) -> dict[str, Any]:
    return {
        "aiId": conn.ai_id,
        "aiName": conn.ai_name,
        "aiVersion": conn.ai_version,
        "aiType": conn.ai_type,
        "aiToken": connections.masked_token(settings, conn),
        "aiApi": conn.ai_api,
        "protocol": conn.protocol,
        "timeout": conn.timeout,
        "timeOut": conn.timeout,
        "shared": connections.is_shared(conn),
        "createdBy": conn.created_by,
        "createdTime": fmt(conn.created_time),
        "updatedBy": conn.updated_by,
        "updatedTime": fmt(conn.updated_time),
    }


def probe_public(result: connections.ProbeResult) -> dict[str, Any]:
    """A "test connection" answer: the upstream's models and the latency (never the key)."""
    return {
        "ok": result.ok,
        "latencyMs": result.latency_ms,
        "models": result.models,
        "modelCount": len(result.models),
        "error": result.error,
        "url": result.url,
    }


def model_detail_public(settings: Settings, detail: model_admin.ModelDetail, *, chat_url: str) -> dict[str, Any]:
    """The model with `modelFile` (and its examples) and, when online, `modelAiOnline`: as it
    is (key masked) for an admin; for a user given a browser key, `aiApi` is `chat_url`
    (Meteor's own `/v1/chat/completions`) and `aiToken` that key, never the provider's."""
    model = detail.model
    body = model_public(model)
    if model.link_type == 1:
        conn = detail.connection
        body["modelAiOnline"] = connection_public(settings, conn) if conn else None
        if conn is not None and detail.browser_key is not None:
            body["modelAiOnline"] |= {"aiApi": chat_url, "aiToken": detail.browser_key, "protocol": "openai"}
    body["modelFile"] = persona_public(model.model_file, model.model_file_id)
    return body


# --- answers: conversations and messages (backend/api/conversations.py) ------------------


def conversation_public(c: ModelConversation) -> dict[str, Any]:
    """The document's fields, and `modelInfoId` (the original code's name for `modelId`)."""
    return {
        "id": c.id,
        "userId": c.user_id,
        "title": c.title,
        "aiName": c.ai_name,
        "modelId": c.model_id,
        "modelInfoId": c.model_id,
        "createdTime": fmt(c.created_time),
        "updatedTime": fmt(c.updated_time),
    }


def model_info_brief(model: ModelInfo | None) -> dict[str, Any] | None:
    """What the original list put beside each conversation: the model's name and base model
    (the linked connection's aiName for an online model, the local model's name otherwise)."""
    if model is None:
        return None
    return {
        "modelId": model.model_id,
        "modelName": model.model_name,
        "baseModelName": model_admin.base_model_name(model),
        "linkType": model.link_type,
        "aiolId": model.aiol_id,
    }


def message_public(m: ModelMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "conversationId": m.conversation_id,
        "promptTokens": m.prompt_tokens,
        "completionTokens": m.completion_tokens,
        "createdTime": fmt(m.created_time),
    }


def conversation_detail_public(conv: ModelConversation, messages: list[ModelMessage]) -> dict[str, Any]:
    """The conversation with its messages, oldest first, as `modelMessageList` (the
    document) and `modelMessageArrayList` (the original code)."""
    listed = [message_public(m) for m in messages]
    return {**conversation_public(conv), "modelMessageList": listed, "modelMessageArrayList": listed}


def listed_conversation_public(conv: ModelConversation, model: ModelInfo | None) -> dict[str, Any]:
    """A conversation in a list, with `modelInfo` (see model_info_brief)."""
    return conversation_public(conv) | {"modelInfo": model_info_brief(model)}
