"""What the seed-003 services share: who is asking, id lists, dates and pages.

- `Viewer`: the visibility rule of a `Principal`: a user sees and changes only their own
  rows, an admin sees all.
- `parse_ids("3,4,5")`: the document's comma-separated `{ids}`; spaces, duplicates,
  non-numbers or an empty list are a 400.
- Dates: answers look like `2024/12/18 09:37` (UTC); queries accept that form, a bare
  date, and ISO 8601. A range is inclusive at both ends at the precision given: an end of
  `2024/12/21 09:00` includes everything up to 09:00:59.999999, an end of `2024/12/21`
  the whole day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import audit
from backend.accounts.identity import Principal, actor_for
from backend.errors import ServiceError

BAD_REQUEST = "APP_QUERY_METHOD_ERROR"
NOT_FOUND = "APP_NOT_FOUND_ERROR"
MAX_IDS = 1000
MAX_ID = 2**63 - 1
DATE_FORMAT = "%Y/%m/%d %H:%M"


def bad_request(message: str) -> ServiceError:
    return ServiceError(BAD_REQUEST, message, 400)


def not_found(what: str, ident: object) -> ServiceError:
    return ServiceError(NOT_FOUND, f"{what} {ident} not found", 404)


def optional_text(value: Any, field: str, limit: int, *, required: bool = False) -> str | None:
    """A request's text field, stripped; None when absent or blank (400 when `required`),
    400 when not a string or longer than `limit`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise bad_request(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    value = value.strip()
    if len(value) > limit:
        raise bad_request(f"{field} must be at most {limit} characters")
    return value


def required_text(value: Any, field: str, limit: int) -> str:
    """A request's text field that must be present and not blank (400 otherwise)."""
    text = optional_text(value, field, limit, required=True)
    assert text is not None  # optional_text raises instead of returning None when required
    return text


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern written with `escape="\\"`."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def name_taken(session: Session, name_column: Any, id_column: Any, name: str, exclude: int | None = None) -> bool:
    """Whether another row (not the one whose id is `exclude`) already has this name."""
    query = select(id_column).where(name_column == name)
    if exclude is not None:
        query = query.where(id_column != exclude)
    return session.scalars(query.limit(1)).first() is not None


def flush_unique(session: Session, duplicate: ServiceError) -> None:
    """Flush, answering `duplicate` when a concurrent insert won the unique index."""
    try:
        session.flush()
    except IntegrityError:
        raise duplicate from None


@dataclass(frozen=True)
class Viewer:
    """The seed-003 services' visibility rule: a user (`user_id`) sees and changes only their
    own rows, an admin (`admin_name`) sees all. Not a second identity: it is what the
    services need of a `Principal` (`Viewer.of`), and services that act for a user they know
    only by id (the gateway's history, media) build one from the id alone."""

    user_id: str | None = None
    admin_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.admin_name is not None

    @property
    def stamp(self) -> str:
        """What created_by / updated_by hold: the user's id (a connection's owner is read back
        from it) or the admin's audit actor, `admin:<name>`."""
        return actor_for("admin", self.admin_name) if self.admin_name is not None else str(self.user_id)

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        return cls.for_admin(principal.name) if principal.is_admin else cls.for_user(principal.id)

    @classmethod
    def for_user(cls, user_id: str) -> Viewer:
        return cls(user_id=user_id)

    @classmethod
    def for_admin(cls, name: str) -> Viewer:
        return cls(admin_name=name)


def audit_admin_change(
    session: Session, viewer: Viewer, action: str, target_type: str, target_id: Any, **detail: Any
) -> None:
    """Admins' changes to models, personas and connections go to the audit log (never a key)."""
    if viewer.admin_name is not None:
        audit.record(
            session,
            actor=actor_for("admin", viewer.admin_name),
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            detail=detail or None,
        )


_IDS = re.compile(r"^[0-9]+(,[0-9]+)*$")


def parse_ids(raw: str) -> list[int]:
    """The ids of a path like `/model/manage/3,4,5`, in order. 400 for spaces, empty
    items, non-numbers, duplicates or more than MAX_IDS ids."""
    if not _IDS.fullmatch(raw or ""):
        raise bad_request(f"ids must be comma-separated numbers without spaces, like 3,4,5 (got {raw[:60]!r})")
    ids = [int(part) for part in raw.split(",")]
    if len(ids) > MAX_IDS:
        raise bad_request(f"at most {MAX_IDS} ids at once")
    if len(set(ids)) != len(ids):
        raise bad_request("ids must not repeat")
    if any(i > MAX_ID for i in ids):
        raise bad_request("id out of range")
    return ids


_FORMS: tuple[tuple[str, timedelta], ...] = (
    ("%Y/%m/%d %H:%M:%S", timedelta(seconds=1)),
    ("%Y/%m/%d %H:%M", timedelta(minutes=1)),
    ("%Y/%m/%d", timedelta(days=1)),
    ("%Y-%m-%d %H:%M:%S", timedelta(seconds=1)),
    ("%Y-%m-%d %H:%M", timedelta(minutes=1)),
    ("%Y-%m-%d", timedelta(days=1)),
)


def parse_when(raw: str, field: str) -> tuple[datetime, timedelta]:
    """A query date and its precision: `2024/12/18 09:37`, `2024/12/18`, or ISO 8601.
    Naive values are UTC. 400 when unreadable."""
    text = raw.strip()
    for form, step in _FORMS:
        try:
            return datetime.strptime(text, form).replace(tzinfo=UTC), step
        except ValueError:
            continue
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise bad_request(f"{field}: not a date; use 2024/12/18 09:37 or ISO 8601") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # the precision of an ISO value is what it spells out
    if value.microsecond or "." in text:
        step = timedelta(microseconds=1)
    elif text.count(":") >= 2:
        step = timedelta(seconds=1)
    elif ":" in text:
        step = timedelta(minutes=1)
    else:
        step = timedelta(days=1)
    return value.astimezone(UTC), step


def created_range(column: Any, start: str | None, end: str | None) -> list[Any]:
    """SQL conditions for an inclusive `[start, end]` range on `column`."""
    conditions = []
    low = high = None
    if start not in (None, ""):
        low, _ = parse_when(start, "createdTimeStart")
        conditions.append(column >= low)
    if end not in (None, ""):
        end_at, step = parse_when(end, "createdTimeEnd")
        high = end_at + step
        conditions.append(column < high)
    if low is not None and high is not None and low >= high:
        raise bad_request("createdTimeStart is after createdTimeEnd")
    return conditions


def fmt(value: datetime | None) -> str | None:
    """`2024/12/18 09:37` in UTC, as in the document."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(DATE_FORMAT)


@dataclass(frozen=True)
class Page:
    """`number` counts from 1; `size` is capped by the caller's settings."""

    number: int
    size: int


def make_page(page_num: int | None, page_size: int | None, *, max_size: int) -> Page | None:
    """None when neither is given (a bare list); otherwise a checked page."""
    if page_num is None and page_size is None:
        return None
    number = 1 if page_num is None else page_num
    size = max_size if page_size is None else page_size
    if number < 1 or number > 10**7:
        raise bad_request("pageNum must be between 1 and 10000000")
    if size < 1:
        raise bad_request("pageSize must be at least 1")
    return Page(number, min(size, max_size))


def run_listing(session: Session, query: Select, page: Page | None, *, bare_limit: int) -> tuple[list[Any], int | None]:
    """Rows of `query` (already ordered) and, when paged, the total count."""
    if page is None:
        return list(session.scalars(query.limit(bare_limit))), None
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = list(session.scalars(query.offset((page.number - 1) * page.size).limit(page.size)))
    return rows, total


def count_listing(session: Session, query: Select) -> int:
    """How many rows `query` has (its order and limit ignored)."""
    return session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0


def shape_listing(items: list[dict[str, Any]], total: int | None) -> Any:
    """A bare list (the document) or `{total, items}` (the original code, when paged)."""
    return items if total is None else {"total": total, "items": items}
