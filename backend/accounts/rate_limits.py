"""Per-user and per-API-key rate limits: requests per minute and tokens per minute, over a
sliding window of 60 seconds, shared by every replica.

Limits: a user's own row (scope `user`), else their academy's default (scope `academy`,
applied to each user of the academy on their own), and for a /v1 request also the key's row
(scope `key`). A request is admitted only if every bucket that has a limit has room for one
more request and for its tokens; tokens are the most the request can use (prompt + maximum
output, the same figure its reservation holds), so a limit holds even while answers stream.

One call before the upstream call: `admit(session, settings, user_id=..., academy=...,
api_key_id=..., tokens=...)` raises RATE_LIMITED (429) with `retry_after` (whole seconds,
when the oldest requests leave the window) or records the request. Shared state lives in the
database (a log of admitted requests, `rate_events`, read under the user's row lock so two
replicas cannot both take the last slot) or, with METEOR_REDIS_URL, in Redis (one sorted set
per bucket, checked and updated by one Lua script, atomic across replicas).
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from backend import audit
from backend.accounts import service as accounts
from backend.cache import TtlCache
from backend.config import Settings
from backend.errors import ServiceError
from db.models import ApiKey, RateEvent, RateLimit, User
from db.session import rowcount

WINDOW_SECONDS = 60
SCOPES = ("user", "key", "academy")
MAX_LIMIT = 10**12
CODE = "RATE_LIMITED"
ERROR = "RATE_LIMIT_ERROR"


class RateLimited(ServiceError):
    """429: a bucket is full; `retry_after` seconds until it has room (the Retry-After header)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(CODE, message, 429, retry_after=retry_after)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Bucket:
    name: str  # "user:<user id>", "key:<user id>:<key id>" (unique across databases sharing a Redis)
    rpm: int | None
    tpm: int | None
    what: str  # for the message: "this user", "this API key"


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


_limits: TtlCache[list[Bucket]] = TtlCache()


def buckets(session: Session, *, user_id: str, academy: str | None, api_key_id: int | None = None) -> list[Bucket]:
    """The buckets a request counts against, with their limits (those without a limit are
    left out); cached for `cache.TTL_SECONDS` (a change through `set_limit` is seen at once
    here)."""
    key = (session.get_bind().engine, user_id, academy, api_key_id)
    return _limits.get(key, lambda: _read_buckets(session, user_id=user_id, academy=academy, api_key_id=api_key_id))


def _read_buckets(session: Session, *, user_id: str, academy: str | None, api_key_id: int | None) -> list[Bucket]:
    wanted = [(RateLimit.scope == "user") & (RateLimit.subject == user_id)]
    if academy:
        wanted.append((RateLimit.scope == "academy") & (RateLimit.subject == academy))
    if api_key_id is not None:
        wanted.append((RateLimit.scope == "key") & (RateLimit.subject == str(api_key_id)))
    rows = {
        r.scope: r for r in session.execute(select(RateLimit.scope, RateLimit.rpm, RateLimit.tpm).where(or_(*wanted)))
    }
    out = []
    own = rows.get("user") or rows.get("academy")
    if own is not None and (own.rpm is not None or own.tpm is not None):
        out.append(Bucket(f"user:{user_id}", own.rpm, own.tpm, "this user"))
    key = rows.get("key")
    if key is not None and (key.rpm is not None or key.tpm is not None):
        out.append(Bucket(f"key:{user_id}:{api_key_id}", key.rpm, key.tpm, "this API key"))
    return out


def _retry_after(events: list[tuple[float, int]], bucket: Bucket, tokens: int, now: float) -> float | None:
    """Seconds until `bucket` has room for one more request of `tokens`, given its events
    (timestamp, tokens) inside the window, oldest first; None when it has room now."""
    count = len(events)
    used = sum(t for _, t in events)
    waits: list[float] = []
    if bucket.rpm is not None and count + 1 > bucket.rpm:
        # the (count - rpm + 1)-th oldest must leave the window
        if bucket.rpm <= 0:
            waits.append(WINDOW_SECONDS)
        else:
            waits.append(events[count - bucket.rpm][0] + WINDOW_SECONDS - now)
    if bucket.tpm is not None and used + tokens > bucket.tpm and count > 0:
        room_needed = used + tokens - bucket.tpm
        freed = 0
        for at, t in events:
            freed += t
            if freed >= room_needed:
                waits.append(at + WINDOW_SECONDS - now)
                break
        else:
            waits.append(events[-1][0] + WINDOW_SECONDS - now)
    elif bucket.tpm is not None and tokens > bucket.tpm and bucket.tpm <= 0:
        waits.append(WINDOW_SECONDS)
    return max(waits) if waits else None


def _refuse(bucket: Bucket, wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    limits = []
    if bucket.rpm is not None:
        limits.append(f"{bucket.rpm} requests")
    if bucket.tpm is not None:
        limits.append(f"{bucket.tpm} tokens")
    return RateLimited(
        f"rate limit of {bucket.what} reached ({' and '.join(limits)} per minute); retry in {seconds} s", seconds
    )


# --- the database backend ---------------------------------------------------------------------


def _db_admit(session: Session, user_id: str, found: list[Bucket], tokens: int, now: datetime) -> None:
    # The user's row lock serialises the requests of one user (and of their keys) across
    # replicas; the reservation that follows takes the same lock anyway.
    session.execute(select(User.id).where(User.id == user_id).with_for_update()).all()
    since = now - timedelta(seconds=WINDOW_SECONDS)
    stamp = now.timestamp()
    # MySQL's REPEATABLE READ snapshot may predate the lock: read the window as a locking read
    # there (the latest committed rows); PostgreSQL and SQLite see them after the lock anyway.
    locking = session.get_bind().dialect.name in ("mysql", "mariadb")
    for bucket in found:
        window = select(func.count(), func.coalesce(func.sum(RateEvent.tokens), 0)).where(
            RateEvent.bucket == bucket.name, RateEvent.at > since
        )
        count, used = session.execute(window.with_for_update(read=True) if locking else window).one()
        over_rpm = bucket.rpm is not None and count + 1 > bucket.rpm
        over_tpm = bucket.tpm is not None and int(used) + tokens > bucket.tpm and (count > 0 or bucket.tpm <= 0)
        if over_rpm or over_tpm:
            listing = (
                select(RateEvent.at, RateEvent.tokens)
                .where(RateEvent.bucket == bucket.name, RateEvent.at > since)
                .order_by(RateEvent.at)
            )
            if locking:
                listing = listing.with_for_update(read=True)
            events = [(at.timestamp(), int(t)) for at, t in session.execute(listing)]
            wait = _retry_after(events, bucket, tokens, stamp)
            raise _refuse(bucket, wait if wait is not None else 1)
    for bucket in found:
        session.add(RateEvent(bucket=bucket.name, at=now, tokens=tokens))
    session.flush()


def sweep(session: Session, *, now: datetime | None = None) -> int:
    """Delete the database backend's events that left the window (the sweeper)."""
    since = _now(now) - timedelta(seconds=WINDOW_SECONDS)
    return rowcount(session.execute(delete(RateEvent).where(RateEvent.at <= since))) or 0


# --- the Redis backend ------------------------------------------------------------------------

# KEYS: one sorted set per bucket. ARGV: now (s), window (s), tokens, member, then per bucket
# rpm and tpm (-1: none). Members are "<member>:<tokens>", scored by time. Returns {} when
# admitted (and added), else {bucket index (1-based), retry after in ms}.
_LUA = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local member = ARGV[4]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local rpm = tonumber(ARGV[3 + 2 * i])
  local tpm = tonumber(ARGV[4 + 2 * i])
  local events = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local count = #events / 2
  local used = 0
  for j = 1, #events, 2 do
    used = used + tonumber(string.match(events[j], ':(%d+)$'))
  end
  local wait = -1
  if rpm >= 0 and count + 1 > rpm then
    if rpm == 0 then wait = window else
      wait = tonumber(events[2 * (count - rpm + 1)]) + window - now
    end
  end
  if tpm >= 0 and used + tokens > tpm and (count > 0 or tpm == 0) then
    local need = used + tokens - tpm
    local freed = 0
    local w = window
    for j = 1, #events, 2 do
      freed = freed + tonumber(string.match(events[j], ':(%d+)$'))
      if freed >= need then w = tonumber(events[j + 1]) + window - now; break end
    end
    if w > wait then wait = w end
  end
  if wait >= 0 then return {i, math.ceil(wait * 1000)} end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member .. ':' .. tokens)
  redis.call('EXPIRE', key, window + 1)
end
return {}
"""

_redis_lock = threading.Lock()
_redis_scripts: dict[str, Any] = {}  # url -> the admit script registered on that server's client


def _redis_script(url: str) -> Any:
    with _redis_lock:
        script = _redis_scripts.get(url)
        if script is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            script = _redis_scripts[url] = client.register_script(_LUA)
        return script


def _redis_admit(url: str, found: list[Bucket], tokens: int, now: datetime) -> None:
    admit_script = _redis_script(url)
    args: list[Any] = [f"{now.timestamp():.6f}", WINDOW_SECONDS, tokens, uuid.uuid4().hex]
    for bucket in found:
        args += [-1 if bucket.rpm is None else bucket.rpm, -1 if bucket.tpm is None else bucket.tpm]
    result = admit_script(keys=[f"meteor:rl:{b.name}" for b in found], args=args)
    if result:
        raise _refuse(found[int(result[0]) - 1], int(result[1]) / 1000)


# --- the one call ---------------------------------------------------------------------------


def admit(
    session: Session,
    settings: Settings,
    *,
    user_id: str | None,
    academy: str | None,
    api_key_id: int | None = None,
    tokens: int = 0,
    now: datetime | None = None,
) -> None:
    """Admit one request of up to `tokens` tokens, or raise RateLimited (429). In the
    caller's transaction (the database backend's event row is written with it). Admins'
    console tests (no user) are not limited."""
    if user_id is None:
        return
    found = buckets(session, user_id=user_id, academy=academy, api_key_id=api_key_id)
    if not found:
        return
    now = _now(now)
    tokens = max(int(tokens), 0)
    if settings.redis_url:
        _redis_admit(settings.redis_url, found, tokens, now)
    else:
        _db_admit(session, user_id, found, tokens, now)


def admit_user(maker, settings: Settings, *, user_id: str, tokens: int = 0, now: datetime | None = None) -> None:
    """`admit` in its own short transaction, the academy looked up (the recognition paths)."""
    with maker.begin() as session:
        academy = session.scalar(select(User.academy).where(User.id == user_id))
        admit(session, settings, user_id=user_id, academy=academy, tokens=tokens, now=now)


# --- admin --------------------------------------------------------------------------------------


def _check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT:
        raise ServiceError(ERROR, f"{what} must be a whole number from 0 to {MAX_LIMIT}", 422)
    return value


def set_limit(
    session: Session, *, scope: str, subject: str, rpm: int | None, tpm: int | None, actor: str
) -> dict[str, Any] | None:
    """Set the limits of a user (id), an API key (id) or an academy's default (name); both
    None removes them. Audited. Returns the row as a dict (None when removed)."""
    if scope not in SCOPES:
        raise ServiceError(ERROR, f"scope must be one of {', '.join(SCOPES)}", 422)
    subject = str(subject or "").strip()
    if not subject or len(subject) > 64:
        raise ServiceError(ERROR, "subject must be 1-64 characters", 422)
    if scope == "user" and session.get(User, subject) is None:
        raise ServiceError("USER_NOT_FOUND", f"user {subject} not found", 404)
    if scope == "key" and (not subject.isdigit() or session.get(ApiKey, int(subject)) is None):
        raise ServiceError(ERROR, f"API key {subject} not found", 404)
    rpm, tpm = _check_limit(rpm, "rpm"), _check_limit(tpm, "tpm")
    row = session.get(RateLimit, (scope, subject), with_for_update=True)
    if rpm is None and tpm is None:
        if row is not None:
            session.delete(row)
        result = None
    else:
        if row is None:
            row = RateLimit(scope=scope, subject=subject)
            session.add(row)
        row.rpm, row.tpm, row.updated_by, row.updated_at = rpm, tpm, actor[:64], datetime.now(UTC)
        result = {"scope": scope, "subject": subject, "rpm": rpm, "tpm": tpm}
    session.flush()
    _limits.forget()
    audit.record(
        session,
        actor=actor,
        action="set_rate_limit",
        target_type=scope,
        target_id=subject,
        detail={"rpm": rpm, "tpm": tpm},
    )
    return result


def set_limit_for(
    session: Session, *, scope: str, subject: str, rpm: int | None, tpm: int | None, actor: str
) -> dict[str, Any] | None:
    """`set_limit` with the subject as a person names it: a user by username, an API key by
    its id or its prefix, an academy by name."""
    target = subject.strip()
    if scope == "user":
        target = accounts.require_user_by_name(session, target).id
    elif scope == "key" and not target.isdigit():
        found = session.scalar(select(ApiKey.id).where(ApiKey.prefix == target))
        target = str(found) if found is not None else target
    return set_limit(session, scope=scope, subject=target, rpm=rpm, tpm=tpm, actor=actor)


def list_limits(session: Session, scope: str | None = None) -> list[dict[str, Any]]:
    stmt = select(RateLimit).order_by(RateLimit.scope, RateLimit.subject)
    if scope:
        stmt = stmt.where(RateLimit.scope == scope)
    return [
        {"scope": r.scope, "subject": r.subject, "rpm": r.rpm, "tpm": r.tpm, "updated_by": r.updated_by}
        for r in session.scalars(stmt)
    ]


def limits_of_user(session: Session, user_id: str) -> list[dict[str, Any]]:
    """The limits that apply to a user: their own or their academy's, and each key's."""
    user = session.get(User, user_id)
    if user is None:
        return []
    key_ids = [str(k) for k in session.scalars(select(ApiKey.id).where(ApiKey.user_id == user_id))]
    wanted = [(RateLimit.scope == "user") & (RateLimit.subject == user_id)]
    if user.academy:
        wanted.append((RateLimit.scope == "academy") & (RateLimit.subject == user.academy))
    if key_ids:
        wanted.append((RateLimit.scope == "key") & RateLimit.subject.in_(key_ids))
    return [
        {"scope": r.scope, "subject": r.subject, "rpm": r.rpm, "tpm": r.tpm}
        for r in session.scalars(select(RateLimit).where(or_(*wanted)).order_by(RateLimit.scope, RateLimit.subject))
    ]
