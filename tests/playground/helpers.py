"""Set-up for the playground tests: small personas on the embedded model, sign-in links and
a client that speaks Gradio's queue protocol (what the browser's Gradio client does)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from backend import bootstrap
from backend.accounts.identity import Principal
from backend.config import Settings
from backend.dashboard.auth import playground_token
from db.models import Admin, ModelFile, ModelInfo, User

EMBEDDED = bootstrap.EMBEDDED_BASE_MODEL


def add_embedded_model(
    maker: sessionmaker,
    *,
    name: str,
    num_predict: int = 12,
    user_id: str | None = None,
    disable: int = 0,
    is_default: bool = False,
) -> int:
    """A persona over the embedded SmolLM2 with a short answer limit (keeps tests quick)."""
    with maker.begin() as s:
        persona = ModelFile(system="You are a helpful assistant.", temperature=0.7, num_predict=num_predict)
        s.add(persona)
        s.flush()
        info = ModelInfo(
            model_name=name,
            model_file_id=persona.model_file_id,
            link_type=0,
            ai_name=EMBEDDED,
            user_id=user_id,
            disable=disable,
            is_default=is_default,
        )
        s.add(info)
        s.flush()
        return info.model_id


def link_token(settings: Settings, maker: sessionmaker, kind: str, account_id: str) -> str:
    """The dashboard's short-lived playground link token for a user or an admin, as the
    dashboard's Playground page makes it."""
    with maker() as s:
        if kind == "user":
            user = s.get(User, account_id)
            account = Principal(
                "user", user.id, user.username, False, user.academy, user.status, user.token_version, user.identity
            )
        else:
            admin = s.scalar(select(Admin).where(Admin.id == int(account_id)))
            account = Principal(
                "admin",
                str(admin.id),
                admin.name,
                bool(admin.is_super),
                None,
                "active",
                admin.token_version,
                admin.identity,
            )
    return playground_token(settings, account)


@dataclass
class GradioSession:
    """One browser tab's worth of the Gradio protocol: config, queue/join, queue/data (SSE)."""

    client: httpx.Client
    session_hash: str = field(default_factory=lambda: secrets.token_hex(6))
    config: dict[str, Any] = field(default_factory=dict)

    def load_config(self) -> dict[str, Any]:
        r = self.client.get("/config")
        r.raise_for_status()
        self.config = r.json()
        return self.config

    def component_id(self, elem_id: str) -> int:
        return next(c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)

    def fn_index(self, elem_id: str, trigger: str) -> int:
        target = [self.component_id(elem_id), trigger]
        return next(d["id"] for d in self.config["dependencies"] if target in [list(t) for t in d["targets"]])

    def join(self, fn_index: int, data: list[Any], trigger_id: int | None = None) -> httpx.Response:
        body = {
            "data": data,
            "fn_index": fn_index,
            "session_hash": self.session_hash,
            "event_data": None,
            "trigger_id": trigger_id,
        }
        return self.client.post("/gradio_api/queue/join", json=body)

    def run(self, fn_index: int, data: list[Any], trigger_id: int | None = None) -> list[dict[str, Any]]:
        """Queue one event and read its messages until it completes (bounded by the client
        timeout); returns every message."""
        r = self.join(fn_index, data, trigger_id)
        r.raise_for_status()
        messages = []
        with self.client.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.session_hash}) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                messages.append(message)
                if message.get("msg") == "process_completed":
                    break
        return messages


def completed_output(messages: list[dict[str, Any]]) -> dict[str, Any]:
    done = [m for m in messages if m.get("msg") == "process_completed"]
    assert done, f"the event never completed: {messages[-3:]}"
    return done[-1]["output"]
