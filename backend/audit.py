"""The audit log of admin actions: who changed what and when.

The actor (here and in the quota ledger) has one format, made by `accounts.identity.actor_of`
(or `Principal.actor`) whichever front end the action came through — the API, the dashboard
or the playground:
- an account: `<kind>:<name>` — `user:alice`, `admin:root` (a super admin is `admin:<name>` too);
- the system: a plain word or `system:<what>` — `cli`, `bootstrap`, `seed-demo`,
  `system:allowances`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from db.models import AuditLog


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add one audit row in the caller's transaction. `detail` must never hold a secret."""
    session.add(
        AuditLog(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            detail=json.dumps(detail, ensure_ascii=False, default=str) if detail else None,
        )
    )
