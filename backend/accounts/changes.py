"""How the seed-003 services apply an update: one typed pydantic model per kind of row
(`ConnectionUpdate`, `ModelUpdate`, `ConversationUpdate`) whose set fields
(`model_dump(exclude_unset=True)`) are the ones to change, and one table of `Change`
rules saying how each field is checked and stored. An absent field keeps its value; what
None means is the rule's (it clears an optional text, it keeps a timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from backend.accounts.viewer import Viewer, audit_admin_change, flush_unique
from backend.errors import ServiceError


def _keeps_none(value: Any) -> bool:
    return value is None


def _keeps_nothing(value: Any) -> bool:
    return False


@dataclass(frozen=True)
class Change:
    """One field of an update: its name in error messages and the audit log (`label`), the
    check that turns the value given into the value stored (400 when invalid), the row's
    attribute when it is not the field's name, and which values leave the stored one alone."""

    label: str
    check: Callable[[Any], Any]
    attr: str | None = None
    keeps: Callable[[Any], bool] = _keeps_nothing

    @classmethod
    def unless_none(cls, label: str, check: Callable[[Any], Any]) -> Change:
        """A field that None leaves as it is (it cannot be cleared)."""
        return cls(label, check, keeps=_keeps_none)


def apply_changes(row: Any, update: BaseModel, rules: Mapping[str, Change]) -> list[str]:
    """Write the fields `update` was given onto `row`, each through its rule, in the order
    of `rules`; the labels of the fields given, in the update model's order."""
    given = update.model_dump(exclude_unset=True)
    for name, rule in rules.items():
        if name in given and not rule.keeps(given[name]):
            setattr(row, rule.attr or name, rule.check(given[name]))
    return [rules[name].label for name in given]


def save_changes(
    session: Session,
    viewer: Viewer,
    row: Any,
    update: BaseModel,
    rules: Mapping[str, Change],
    *,
    duplicate: Callable[[], ServiceError],
    audit: tuple[str, str, Any],
    then: Callable[[], None] | None = None,
) -> None:
    """An admin-managed row's update: apply the changes (`apply_changes`), then `then()`
    (what follows from the new values), stamp who changed the row and when, flush (a name
    that a concurrent write took is `duplicate()`), and audit an admin's change as `audit`
    = (action, target type, target id) with the labels of the fields given."""
    fields = apply_changes(row, update, rules)
    if then is not None:
        then()
    row.updated_by = viewer.stamp
    row.updated_time = datetime.now(UTC)
    flush_unique(session, duplicate())
    action, target_type, target_id = audit
    audit_admin_change(session, viewer, action, target_type, target_id, fields=fields)
