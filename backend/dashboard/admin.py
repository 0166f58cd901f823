"""What the dashboard's overview shows, and the user & quota actions of its admin pages.

Every figure is an aggregate query (COUNT / SUM / GROUP BY over an indexed range); no
function here loads a whole table. Usage charts read the daily roll-up for complete days
and the raw rows only for today (backend/reporting/rollup.py), so they cost the same
on any traffic. Actions (in-place edits, bulk grants, disabling) go
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

from backend import audit
from backend.accounts import service as accounts
from backend.billing import quota
from backend.config import Settings
from backend.errors import ServiceError
from backend.reporting import rollup as usage_rollup
from db.models import UsageDaily, UsageRecord, User

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


def _split(session: Session, days: int, today: date | None, user_id: str | None) -> usage_rollup.Window:
    """The window's days: rolled-up ones are read from usage_daily, the rest (today) from the raw
    rows. One user's rows come straight from usage_records through the (user_id, created_at) index."""
    start, end = _window(days, today)
    if user_id:
        return usage_rollup.raw_window(start.date(), end.date())
    return usage_rollup.window(session, start.date(), end.date())


def _raw_where(win: usage_rollup.Window, academy: str | None, user_id: str | None) -> list[Any]:
    where = [win.raw_condition()]
    if academy:
        where.append(UsageRecord.academy == academy)
    if user_id:
        where.append(UsageRecord.user_id == user_id)
    return where


def _daily_where(win: usage_rollup.Window, academy: str | None) -> list[Any]:
    where = [win.daily_condition()]
    if academy:
        where.append(UsageDaily.academy == academy)
    return where


DAILY_TOKENS = UsageDaily.prompt_tokens + UsageDaily.completion_tokens


def tokens_per_day(
    session: Session,
    *,
    days: int = 30,
    today: date | None = None,
    academy: str | None = None,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """[{day, tokens, requests, latency_ms, ttft_ms}] for the last `days` days, oldest first;
    days without usage are present with zeros. Rolled-up days come from usage_daily."""
    win = _split(session, days, today, user_id)
    found: dict[str, list[int]] = {}  # day -> [tokens, requests, latency sum, latency n, ttft sum, ttft n]
    if win.has_rolled:
        rows = session.execute(
            select(
                UsageDaily.day,
                func.sum(DAILY_TOKENS),
                func.sum(UsageDaily.requests),
                func.sum(UsageDaily.latency_ms_sum),
                func.sum(UsageDaily.latency_count),
                func.sum(UsageDaily.ttft_ms_sum),
                func.sum(UsageDaily.ttft_count),
            )
            .where(*_daily_where(win, academy))
            .group_by(UsageDaily.day)
        ).all()
        for r in rows:
            found[str(r[0])[:10]] = [int(v or 0) for v in r[1:]]
    day = func.date(UsageRecord.created_at)
    rows = session.execute(
        select(
            day,
            func.coalesce(func.sum(USED_TOKENS), 0),
            func.count(),
            func.coalesce(func.sum(UsageRecord.latency_ms), 0),
            func.count(UsageRecord.latency_ms),
            func.coalesce(func.sum(UsageRecord.ttft_ms), 0),
            func.count(UsageRecord.ttft_ms),
        )
        .where(*_raw_where(win, academy, user_id))
        .group_by(day)
    ).all()
    for r in rows:
        key = str(r[0])[:10]
        values = [int(v or 0) for v in r[1:]]
        found[key] = [a + b for a, b in zip(found.get(key, [0] * 6), values, strict=True)]
    out = []
    for i in range(max(1, days)):
        key = (win.start + timedelta(days=i)).isoformat()
        tokens, requests, latency, latency_n, ttft, ttft_n = found.get(key, [0] * 6)
        out.append(
            {
                "day": key,
                "tokens": tokens,
                "requests": requests,
                "latency_ms": round(latency / latency_n, 1) if latency_n else None,
                "ttft_ms": round(ttft / ttft_n, 1) if ttft_n else None,
            }
        )
    return out


def _grouped(
    session: Session, daily_column: Any, raw_column: Any, win: usage_rollup.Window, limit: int, user_id: str | None
) -> list[tuple[str, int, int]]:
    """(group, tokens, requests) by a column, most tokens first: usage_daily for the rolled-up
    days plus the raw rows of the others. NULL and '' are one group ('' in usage_daily)."""
    totals: dict[str, list[int]] = {}
    parts = []
    if win.has_rolled:
        parts.append(
            select(daily_column, func.sum(DAILY_TOKENS), func.sum(UsageDaily.requests))
            .where(win.daily_condition())
            .group_by(daily_column)
        )
    group = func.coalesce(raw_column, "")
    parts.append(
        select(group, func.coalesce(func.sum(USED_TOKENS), 0), func.count())
        .where(*_raw_where(win, None, user_id))
        .group_by(group)
    )
    for stmt in parts:
        for name, tokens, requests in session.execute(stmt):
            entry = totals.setdefault(name or "", [0, 0])
            entry[0] += int(tokens or 0)
            entry[1] += int(requests or 0)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return [(name, tokens, requests) for name, (tokens, requests) in ranked[:limit]]


def tokens_per_model(
    session: Session, *, days: int = 30, today: date | None = None, limit: int = 20, user_id: str | None = None
) -> list[dict[str, Any]]:
    """[{model, tokens, requests}] over the last `days` days, most used first."""
    win = _split(session, days, today, user_id)
    rows = _grouped(session, UsageDaily.model, UsageRecord.model, win, limit, user_id)
    return [{"model": name or "-", "tokens": tokens, "requests": requests} for name, tokens, requests in rows]


def tokens_per_academy(
    session: Session, *, days: int = 30, today: date | None = None, limit: int = 30
) -> list[dict[str, Any]]:
    """[{academy, tokens, requests}] over the last `days` days, most used first."""
    win = _split(session, days, today, None)
    rows = _grouped(session, UsageDaily.academy, UsageRecord.academy, win, limit, None)
    return [{"academy": name or "-", "tokens": tokens, "requests": requests} for name, tokens, requests in rows]


def top_users(session: Session, *, days: int = 30, today: date | None = None, limit: int = 10) -> list[dict[str, Any]]:
    """[{username, academy, tokens, requests}]: the heaviest users of the last `days` days
    (usage without a user, e.g. admin console tests, is left out)."""
    win = _split(session, days, today, None)
    rows = usage_rollup.top_users(session, win, limit=limit)
    ids = [user_id for user_id, _, _ in rows]
    names = {u.id: u for u in session.execute(select(User.id, User.username, User.academy).where(User.id.in_(ids)))}
    out = []
    for user_id, tokens, requests in rows:
        user = names.get(user_id)
        out.append(
            {
                "username": user.username if user else user_id,
                "academy": user.academy if user else None,
                "tokens": tokens,
                "requests": requests,
            }
        )
    return out


def status_counts(
    session: Session, *, days: int = 30, today: date | None = None, user_id: str | None = None
) -> list[dict[str, Any]]:
    """[{status, requests}] over the last `days` days (ok / error / cancelled)."""
    win = _split(session, days, today, user_id)
    counts: dict[str, int] = {}
    parts = [
        select(UsageRecord.status, func.count()).where(*_raw_where(win, None, user_id)).group_by(UsageRecord.status)
    ]
    if win.has_rolled:
        parts.append(
            select(UsageDaily.status, func.sum(UsageDaily.requests))
            .where(win.daily_condition())
            .group_by(UsageDaily.status)
        )
    for stmt in parts:
        for status, requests in session.execute(stmt):
            counts[status] = counts.get(status, 0) + int(requests or 0)
    return [{"status": status, "requests": requests} for status, requests in counts.items()]


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
