"""What the dashboard's overview shows, and the user & quota actions of its admin pages.

Every figure is one aggregate query (COUNT / SUM / GROUP BY over an indexed range); no
function here loads a whole table. Actions (in-place edits, bulk grants, disabling) go
through `accounts` and `quota`, so each writes its ledger and audit rows, in the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.errors import ServiceError
from backend.services import accounts, audit, quota
from db.models import UsageRecord, User

USED_TOKENS = UsageRecord.prompt_tokens + UsageRecord.completion_tokens


@dataclass(frozen=True)
class Overview:
    users: int
    academies: int
    tokens_in_circulation: int
    pic_times_in_circulation: int
    requests_today: int
    tokens_today: int


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _window(days: int, today: date | None) -> tuple[datetime, datetime]:
    today = today or datetime.now(UTC).date()
    return _day_start(today - timedelta(days=max(1, days) - 1)), _day_start(today + timedelta(days=1))


def overview(session: Session, *, today: date | None = None) -> Overview:
    """Headline figures: users, academies, balances in circulation, today's requests and tokens."""
    users, academies, tokens, pic_times = session.execute(
        select(
            func.count(),
            func.count(func.distinct(User.academy)),
            func.coalesce(func.sum(User.tokens), 0),
            func.coalesce(func.sum(User.pic_times), 0),
        ).select_from(User)
    ).one()
    start, end = _window(1, today)
    requests, used = session.execute(
        select(func.count(), func.coalesce(func.sum(USED_TOKENS), 0)).where(
            UsageRecord.created_at >= start, UsageRecord.created_at < end
        )
    ).one()
    return Overview(int(users), int(academies), int(tokens), int(pic_times), int(requests), int(used))


def _usage_where(start: datetime, end: datetime, academy: str | None, user_id: str | None) -> list[Any]:
    where = [UsageRecord.created_at >= start, UsageRecord.created_at < end]
    if academy:
        where.append(UsageRecord.academy == academy)
    if user_id:
        where.append(UsageRecord.user_id == user_id)
    return where


def tokens_per_day(
    session: Session,
    *,
    days: int = 30,
    today: date | None = None,
    academy: str | None = None,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """[{day, tokens, requests, latency_ms, ttft_ms}] for the last `days` days, oldest first;
    days without usage are present with zeros."""
    start, end = _window(days, today)
    day = func.date(UsageRecord.created_at)
    rows = session.execute(
        select(
            day.label("day"),
            func.coalesce(func.sum(USED_TOKENS), 0),
            func.count(),
            func.avg(UsageRecord.latency_ms),
            func.avg(UsageRecord.ttft_ms),
        )
        .where(*_usage_where(start, end, academy, user_id))
        .group_by(day)
    ).all()
    found = {str(r[0])[:10]: r for r in rows}
    out = []
    for i in range(max(1, days)):
        key = (start.date() + timedelta(days=i)).isoformat()
        r = found.get(key)
        out.append(
            {
                "day": key,
                "tokens": int(r[1]) if r else 0,
                "requests": int(r[2]) if r else 0,
                "latency_ms": round(float(r[3]), 1) if r and r[3] is not None else None,
                "ttft_ms": round(float(r[4]), 1) if r and r[4] is not None else None,
            }
        )
    return out


def _grouped(session: Session, column: Any, start: datetime, end: datetime, limit: int, **where: Any):
    total = func.coalesce(func.sum(USED_TOKENS), 0)
    return session.execute(
        select(column, total.label("tokens"), func.count().label("requests"))
        .where(*_usage_where(start, end, where.get("academy"), where.get("user_id")))
        .group_by(column)
        .order_by(total.desc())
        .limit(limit)
    ).all()


def tokens_per_model(
    session: Session, *, days: int = 30, today: date | None = None, limit: int = 20, user_id: str | None = None
) -> list[dict[str, Any]]:
    """[{model, tokens, requests}] over the last `days` days, most used first."""
    start, end = _window(days, today)
    rows = _grouped(session, UsageRecord.model, start, end, limit, user_id=user_id)
    return [{"model": r[0] or "-", "tokens": int(r[1]), "requests": int(r[2])} for r in rows]


def tokens_per_academy(
    session: Session, *, days: int = 30, today: date | None = None, limit: int = 30
) -> list[dict[str, Any]]:
    """[{academy, tokens, requests}] over the last `days` days, most used first."""
    start, end = _window(days, today)
    rows = _grouped(session, UsageRecord.academy, start, end, limit)
    return [{"academy": r[0] or "-", "tokens": int(r[1]), "requests": int(r[2])} for r in rows]


def top_users(session: Session, *, days: int = 30, today: date | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """[{username, academy, tokens, requests}]: the heaviest users of the last `days` days."""
    start, end = _window(days, today)
    rows = _grouped(session, UsageRecord.user_id, start, end, limit + 1)
    ids = [r[0] for r in rows if r[0]][:limit]
    names = {u.id: u for u in session.execute(select(User.id, User.username, User.academy).where(User.id.in_(ids)))}
    out = []
    for user_id, tokens, requests in rows:
        if not user_id:
            continue
        user = names.get(user_id)
        out.append(
            {
                "username": user.username if user else user_id,
                "academy": user.academy if user else None,
                "tokens": int(tokens),
                "requests": int(requests),
            }
        )
    return out[:limit]


def status_counts(
    session: Session, *, days: int = 30, today: date | None = None, user_id: str | None = None
) -> list[dict[str, Any]]:
    """[{status, requests}] over the last `days` days (ok / error / cancelled)."""
    start, end = _window(days, today)
    rows = session.execute(
        select(UsageRecord.status, func.count())
        .where(*_usage_where(start, end, None, user_id))
        .group_by(UsageRecord.status)
    ).all()
    return [{"status": r[0], "requests": int(r[1])} for r in rows]


# --- users & quotas ----------------------------------------------------------------------

EDITABLE_USER_FIELDS = ("tokens", "pic_times", "academy", "status")
USER_STATUSES = ("active", "disabled")


@dataclass(frozen=True)
class UserEdit:
    """One user's requested change: only the fields that differ from what was shown."""

    user_id: str
    username: str
    before: dict[str, Any]
    after: dict[str, Any]


def plan_user_edits(shown: Sequence[dict[str, Any]], edited_rows: dict[int, dict[str, Any]]) -> list[UserEdit]:
    """Turn `st.data_editor`'s `edited_rows` ({row position: {column: new value}}) over the rows
    that were shown into a list of validated edits; values equal to the shown ones are dropped."""
    edits = []
    for position, changes in sorted(edited_rows.items()):
        row = shown[int(position)]
        before, after = {}, {}
        for name, value in changes.items():
            if name not in EDITABLE_USER_FIELDS:
                raise ServiceError("MODIFY_USER_ERROR", f"{name} cannot be edited here", 422)
            if name in ("tokens", "pic_times"):
                if value is None or int(value) < 0:
                    raise ServiceError("MODIFY_USER_ERROR", f"{name} of {row['username']} must be 0 or more", 422)
                value = int(value)
            elif name == "status" and value not in USER_STATUSES:
                raise ServiceError("MODIFY_USER_ERROR", "status must be 'active' or 'disabled'", 422)
            elif name == "academy":
                value = (value or "").strip() or None
            if value != row.get(name):
                before[name], after[name] = row.get(name), value
        if after:
            edits.append(UserEdit(row["id"], row["username"], before, after))
    return edits


def apply_user_edits(session: Session, settings: Settings, *, actor: str, edits: Sequence[UserEdit]) -> int:
    """Apply planned edits through `accounts.modify_user` (balances via the quota service: one
    `admin_adjust` ledger row each; one audit row per user). Returns how many users changed."""
    for edit in edits:
        user = session.get(User, edit.user_id)
        if user is None:
            raise ServiceError("USER_NOT_FOUND", f"user {edit.username!r} no longer exists", 404)
        after = edit.after
        accounts.modify_user(
            session,
            settings,
            target_username=user.username,
            actor=actor,
            new_tokens=after.get("tokens"),
            new_pic_times=after.get("pic_times"),
            new_academy=(after["academy"] or "") if "academy" in after else None,
            new_status=after.get("status"),
        )
    return len(edits)


def users_in_academy(session: Session, academy: str) -> list[str]:
    """The ids of every user of an academy (indexed), for a bulk action."""
    return list(session.scalars(select(User.id).where(User.academy == academy).order_by(User.id)))


BULK_ACTIONS = ("grant_tokens", "grant_pic_times", "disable", "enable")


def bulk_action(
    session: Session,
    settings: Settings,
    *,
    actor: str,
    user_ids: Sequence[str],
    action: str,
    amount: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Grant tokens / picTimes to, or disable / enable, many users in one transaction: one ledger
    row per user for grants, one audit row for the whole action. Returns how many users."""
    if action not in BULK_ACTIONS:
        raise ServiceError("MODIFY_USER_ERROR", f"unknown bulk action {action!r}", 422)
    if action.startswith("grant") and amount <= 0:
        raise ServiceError("MODIFY_USER_ERROR", "the amount to grant must be positive", 422)
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        raise ServiceError("MODIFY_USER_ERROR", "no users selected", 422)
    for i, user_id in enumerate(ids, 1):
        if action == "grant_tokens":
            quota.grant(session, user_id=user_id, tokens=amount, actor=actor, note="bulk grant")
        elif action == "grant_pic_times":
            quota.grant(session, user_id=user_id, pic_times=amount, actor=actor, note="bulk grant")
        else:
            user = session.get(User, user_id)
            if user is None:
                raise ServiceError("USER_NOT_FOUND", f"user {user_id} not found", 404)
            status = "disabled" if action == "disable" else "active"
            if user.status != status:
                user.status = status
                if status == "disabled":
                    user.token_version += 1
        if progress is not None and (i % 200 == 0 or i == len(ids)):
            progress(i, len(ids))
    audit.record(
        session,
        actor=actor,
        action=f"bulk_{action}",
        target_type="user",
        target_id=ids[0] if len(ids) == 1 else None,
        detail={"users": len(ids), "amount": amount, "first_ids": ids[:20]},
    )
    return len(ids)
