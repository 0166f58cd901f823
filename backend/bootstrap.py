"""First-run set-up: the first super admin and the embedded default model."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.accounts import service as accounts
from backend.config import Settings
from backend.providers.registry import EMBEDDED_BASE_MODEL
from db.models import Admin, ModelFile, ModelInfo

DEFAULT_MODEL_NAME = "SmolLM2"


def ensure_super_admin(session: Session, settings: Settings) -> str | None:
    """Create super admin `admin` when there is no admin at all. Returns the password when
    it was generated (to print once), None otherwise; only its hash is stored."""
    if session.scalar(select(func.count()).select_from(Admin)):
        return None
    given = settings.admin_password.get_secret_value() if settings.admin_password else None
    password = given or secrets.token_urlsafe(12)
    accounts.create_admin(session, settings, name="admin", password=password, is_super=True, actor="bootstrap")
    return None if given else password


def ensure_default_model(session: Session) -> None:
    """Register the embedded llama.cpp model as the enabled default on a fresh install."""
    if session.scalar(select(func.count()).select_from(ModelInfo)):
        return
    persona = ModelFile(
        system="You are a helpful assistant.",
        temperature=0.7,
        top_p=0.9,
        num_predict=256,
        repeat_penalty=1.1,
        num_ctx=2048,
    )
    session.add(persona)
    session.flush()
    session.add(
        ModelInfo(
            model_name=DEFAULT_MODEL_NAME,
            model_version="135M-Q4_1",
            model_file_id=persona.model_file_id,
            link_type=0,
            ai_name=EMBEDDED_BASE_MODEL,
            is_default=True,
            disable=0,
            created_by="bootstrap",
            description="SmolLM2-135M-Instruct on the embedded llama.cpp engine (offline)",
        )
    )


def bootstrap(session: Session, settings: Settings) -> str | None:
    """Everything a fresh database needs; returns a generated admin password, if any."""
    password = ensure_super_admin(session, settings)
    ensure_default_model(session)
    return password
