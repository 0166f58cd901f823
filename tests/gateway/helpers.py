"""Shared set-up for the gateway tests: models over real upstreams, a real HTTP server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from backend import bootstrap, security
from backend.billing import quota
from backend.config import Settings
from db.models import ModelAiOnline, ModelFile, ModelFileEgMessage, ModelInfo, QuotaReservation

UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdef"
SYSTEM_PROMPT = "You are Meteor's test persona."
EXAMPLES = [("What is 2+2?", "4"), ("Capital of France?", "Paris")]


def add_online_model(
    maker: sessionmaker,
    settings: Settings,
    *,
    url: str,
    name: str = "fake",
    base_model: str = "fake-model",
    protocol: str = "openai",
    timeout: int = 10,
    user_id: str | None = None,
    disable: int = 0,
    api_key: str | None = UPSTREAM_KEY,
    examples: list[tuple[str, str]] = EXAMPLES,
    **persona: Any,
) -> int:
    """An online model (persona + connection) over the upstream at `url`; returns model_id."""
    conn_id = add_connection(
        maker, settings, url=url, name=f"conn-{name}", protocol=protocol, timeout=timeout, api_key=api_key
    )
    with maker.begin() as s:
        persona_row = ModelFile(system=SYSTEM_PROMPT, **persona)
        s.add(persona_row)
        s.flush()
        for user_message, model_message in examples:
            s.add(
                ModelFileEgMessage(
                    user_message=user_message, model_message=model_message, model_file_id=persona_row.model_file_id
                )
            )
        info = ModelInfo(
            model_name=name,
            model_file_id=persona_row.model_file_id,
            link_type=1,
            aiol_id=conn_id,
            ai_name=base_model,
            user_id=user_id,
            disable=disable,
        )
        s.add(info)
        s.flush()
        return info.model_id


def add_connection(
    maker: sessionmaker,
    settings: Settings,
    *,
    url: str,
    name: str,
    protocol: str = "openai",
    timeout: int = 10,
    api_key: str | None = UPSTREAM_KEY,
) -> int:
    """A connection (model_ai_online) to the upstream at `url`; returns its id."""
    with maker.begin() as s:
        conn = ModelAiOnline(
            ai_api=url,
            ai_token_encrypted=security.encrypt_secret(settings, api_key),
            ai_name=name,
            protocol=protocol,
            timeout=timeout,
        )
        s.add(conn)
        s.flush()
        return conn.ai_id


def add_default_embedded(maker: sessionmaker) -> None:
    """What a fresh install registers: SmolLM2 on the embedded engine, the enabled default."""
    with maker.begin() as s:
        bootstrap.ensure_default_model(s)


def balance(maker: sessionmaker, user_id: str) -> int:
    with maker() as s:
        return quota.balance(s, user_id).tokens


def assert_ledger_consistent(maker: sessionmaker, user_id: str) -> int:
    """Balance == ledger sum, never negative, no reservation left open; returns the balance."""
    with maker() as s:
        bal = quota.balance(s, user_id)
        assert bal == quota.ledger_sum(s, user_id)
        assert bal.tokens >= 0
        active = s.scalar(
            select(func.count())
            .select_from(QuotaReservation)
            .where(QuotaReservation.user_id == user_id, QuotaReservation.status == "active")
        )
        assert active == 0
        return bal.tokens


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy, at most `timeout` seconds (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def parse_like_desktop_client(lines: Iterator[str], tokens: int) -> tuple[str, int, list[dict]]:
    """What the original desktop client does with /textModel/stream: concatenate
    payload.choices.text[].content and subtract payload.usage.text.total_tokens when
    header.status == 2. Returns (text, tokens left, frames)."""
    text = ""
    frames = []
    for line in lines:
        if not line.strip():
            continue
        frame = json.loads(line)
        frames.append(frame)
        for piece in frame["payload"]["choices"]["text"]:
            text += piece["content"]
        if frame["header"]["status"] == 2:
            tokens -= frame["payload"]["usage"]["text"]["total_tokens"]
    return text, tokens, frames
