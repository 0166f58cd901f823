"""Typed declarative models for every Meteor table.

Seed-000 tables (users, admins, vouchers, redemptions) keep the original's id forms
(users: 32-hex strings; vouchers: the redeem code). Seed-003 tables keep their original
names and integer ids; their `user_id` columns hold the same 32-hex user id, so
conversations and models join to users. Every column the dashboard filters on is indexed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere large tables get BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Integer ids are never handed out twice: SQLite's plain INTEGER PRIMARY KEY reuses the
# highest id after it is deleted (a new admin would get a deleted admin's id); AUTOINCREMENT
# does not. PostgreSQL sequences and InnoDB / MariaDB counters never go back anyway.
NO_ID_REUSE = {"sqlite_autoincrement": True}


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC, on every backend (MySQL and SQLite drop tz)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))  # default DATETIME drops sub-seconds
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_hex_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}
    if TYPE_CHECKING:  # every model maps one Table (DeclarativeBase types it as any FromClause)
        __table__: ClassVar[Table]


# --- seed 000: accounts, quota, vouchers -------------------------------------------------


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_hex_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(128), index=True)
    academy: Mapped[str | None] = mapped_column(String(64), index=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    # A random stamp per account, carried in every token and dashboard cookie: a token issued
    # to a deleted account never fits another account that later gets its name (or id).
    identity: Mapped[str] = mapped_column(String(32), default=new_hex_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # No index on tokens / pic_times on purpose: MariaDB then plans quota updates as range
    # scans over that index, locking other users' rows and deadlocking with row locks.


class Admin(Base):
    __tablename__ = "admins"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    is_super: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    identity: Mapped[str] = mapped_column(String(32), default=new_hex_id)  # see User.identity
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Voucher(Base):
    """The seed's "token" (令牌): a redeem code granting tokens and picTimes to one academy."""

    __tablename__ = "vouchers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the redeem code
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    academy: Mapped[str | None] = mapped_column(String(64), index=True)
    available: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    redeemed_count: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Redemption(Base):
    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    voucher_id: Mapped[str] = mapped_column(String(64), ForeignKey("vouchers.id", ondelete="CASCADE"), index=True)
    redeemed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    __table_args__ = (UniqueConstraint("user_id", "voucher_id", name="uq_redemption_user_voucher"), NO_ID_REUSE)


class QuotaLedger(Base):
    """Every change of a balance. For each user: balance == sum of deltas. No FK, so the
    money trail outlives a deleted user."""

    __tablename__ = "quota_ledger"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # grant redeem admin_adjust reserve settle release
    delta_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reservation_id: Mapped[str | None] = mapped_column(String(32), index=True)
    model: Mapped[str | None] = mapped_column(String(128), index=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str | None] = mapped_column(String(64), index=True)
    note: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # quota policy: the prices a chat was charged at (quota units per prompt / completion token)
    prompt_price: Mapped[float | None] = mapped_column(Float)
    completion_price: Mapped[float | None] = mapped_column(Float)
    # a chat's settle row: the model_ai_online connection that served it (no FK: history stays)
    connection_id: Mapped[int | None] = mapped_column(Integer)


class QuotaReservation(Base):
    __tablename__ = "quota_reservations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_hex_id)
    user_id: Mapped[str] = mapped_column(String(32), index=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active settled released
    request_id: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    prompt_price: Mapped[float | None] = mapped_column(Float)  # quota policy: prices captured at reserve time
    completion_price: Mapped[float | None] = mapped_column(Float)


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32), index=True)
    target_id: Mapped[str | None] = mapped_column(String(64), index=True)
    detail: Mapped[str | None] = mapped_column(Text)  # JSON, never a secret
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LoginAttempt(Base):
    """Failed logins, for the per-account and per-address limits (shared by all processes)."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject: Mapped[str] = mapped_column(String(160))  # "user:alice", "admin:root", "addr:1.2.3.4"
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_login_attempts_subject_at", "subject", "at"), NO_ID_REUSE)


class LoginLimit(Base):
    """Login admission counters (backend/accounts/login_limits.py): one row per subject —
    `pair:<kind>:<name>|<address>`, `acct:<kind>:<name>`, `addr:<address>` — counting the
    password checks admitted in the window that began at `window_start`; `known:` rows
    mark an address that has signed in to the account (window_start = last success);
    `retry:` rows remember a failed name + password for a few seconds (keyed HMAC)."""

    __tablename__ = "login_limits"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class PlaygroundLink(Base):
    """Playground sign-in links already exchanged: a link (its JWT id) signs in once, on
    whichever API server it reaches first. Rows past `expires_at` are swept on the next use."""

    __tablename__ = "playground_links"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ApiKey(Base):
    """Per-user `sk-...` keys for the OpenAI-compatible /v1; only a SHA-256 is stored."""

    __tablename__ = "api_keys"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # shown to identify a key: "sk-abcd…"
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    allowed_models: Mapped[str | None] = mapped_column(Text)  # JSON list; null = all
    # null: a key the user (or an admin) made; "browser": a short-lived key Meteor hands the
    # user's own browser for one model (`model_id`), see backend/accounts/apikeys.py
    scope: Mapped[str | None] = mapped_column(String(16), index=True)
    model_id: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(index=True)
    last_used_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class UsageRecord(Base):
    """One row per inference request (chat, voice, picture), whatever its outcome."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    user_id: Mapped[str | None] = mapped_column(String(32))
    academy: Mapped[str | None] = mapped_column(String(64))
    admin_name: Mapped[str | None] = mapped_column(String(64))  # console tests: charged to no user
    kind: Mapped[str] = mapped_column(String(16), default="chat", index=True)  # chat voice picture
    model: Mapped[str | None] = mapped_column(String(128))
    provider: Mapped[str | None] = mapped_column(String(32), index=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="ok", index=True)  # ok error cancelled
    error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # a chat's model_ai_online connection (the one that served it, with failover); no FK
    connection_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_usage_user_created", "user_id", "created_at"),
        Index("ix_usage_model_created", "model", "created_at"),
        Index("ix_usage_academy_created", "academy", "created_at"),
        NO_ID_REUSE,
    )


class UsageRollupDay(Base):
    """A UTC day whose usage_records are rolled up into usage_daily (one row per day, also for
    days without usage); written in the same transaction as that day's usage_daily rows."""

    __tablename__ = "usage_rollup_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)  # usage rows of the day
    rolled_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageDaily(Base):
    """usage_records of one complete UTC day summed per academy, model, kind and outcome
    (backend/reporting/rollup.py). '' stands for a missing academy or model."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    academy: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    model: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_count: Mapped[int] = mapped_column(BigInteger, default=0)  # rows with a latency
    ttft_ms_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    ttft_count: Mapped[int] = mapped_column(BigInteger, default=0)  # rows with a time to first token


class UsageTopUsers(Base):
    """The heaviest users (by tokens) of the rolled-up days [from_day, to_day): a JSON list of
    [user_id, tokens, requests], heaviest first, cut at usage_rollup.TOP_KEEP entries."""

    __tablename__ = "usage_top_users"

    from_day: Mapped[date] = mapped_column(Date, primary_key=True)
    to_day: Mapped[date] = mapped_column(Date, primary_key=True)
    ranking: Mapped[str] = mapped_column(Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"))  # ~50 kB
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- seed 003: models, personas, connections, conversations ------------------------------


class ModelAiOnline(Base):
    """An online connection (API URL, encrypted key, type, timeout)."""

    __tablename__ = "model_ai_online"
    __table_args__ = NO_ID_REUSE

    ai_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ai_api: Mapped[str] = mapped_column(String(500))
    ai_token_encrypted: Mapped[str | None] = mapped_column(Text)
    ai_type: Mapped[int] = mapped_column(Integer, default=1, index=True)  # 1 llm, 2 chat, 3 image
    ai_name: Mapped[str] = mapped_column(String(50), unique=True)
    ai_version: Mapped[str | None] = mapped_column(String(50), index=True)
    protocol: Mapped[str] = mapped_column(String(16), default="openai")  # openai ollama spark
    timeout: Mapped[int] = mapped_column(Integer, default=30)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_time: Mapped[datetime | None] = mapped_column()


class ModelFile(Base):
    """A persona: system prompt, sampling parameters, few-shot examples."""

    __tablename__ = "model_file"
    __table_args__ = NO_ID_REUSE

    model_file_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    system: Mapped[str | None] = mapped_column(Text)
    mirostat: Mapped[int | None] = mapped_column(Integer)
    mirostat_eta: Mapped[float | None] = mapped_column(Float)
    mirostat_tau: Mapped[float | None] = mapped_column(Float)
    num_ctx: Mapped[int | None] = mapped_column(Integer)
    repeat_last_n: Mapped[int | None] = mapped_column(Integer)
    repeat_penalty: Mapped[float | None] = mapped_column(Float)
    temperature: Mapped[float | None] = mapped_column(Float)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    stop: Mapped[str | None] = mapped_column(String(500))
    tfs_z: Mapped[float | None] = mapped_column(Float)
    num_predict: Mapped[int | None] = mapped_column(Integer)
    top_p: Mapped[float | None] = mapped_column(Float)
    min_p: Mapped[float | None] = mapped_column(Float)
    top_k: Mapped[int | None] = mapped_column(Integer)

    examples: Mapped[list[ModelFileEgMessage]] = relationship(
        back_populates="model_file",
        cascade="all, delete-orphan",
        order_by="ModelFileEgMessage.message_id",
        passive_deletes=True,
    )


class ModelFileEgMessage(Base):
    __tablename__ = "model_file_egmessage"
    __table_args__ = NO_ID_REUSE

    message_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_message: Mapped[str] = mapped_column(Text)
    model_message: Mapped[str] = mapped_column(Text)
    model_file_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_file.model_file_id", ondelete="CASCADE"), index=True
    )

    model_file: Mapped[ModelFile] = relationship(back_populates="examples")


class ModelInfo(Base):
    """A model as users pick it: a persona (model_file) over a base model, local or online."""

    __tablename__ = "model_info"
    __table_args__ = NO_ID_REUSE

    model_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(50), unique=True)  # the persona's name
    model_version: Mapped[str | None] = mapped_column(String(50))
    model_file_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_file.model_file_id", ondelete="SET NULL"), index=True
    )
    disable: Mapped[int] = mapped_column(Integer, default=0, index=True)
    user_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    link_type: Mapped[int] = mapped_column(Integer, default=0, index=True)  # 0 local, 1 online
    description: Mapped[str | None] = mapped_column(String(500))
    aiol_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("model_ai_online.ai_id", ondelete="SET NULL"), index=True
    )
    ai_name: Mapped[str | None] = mapped_column(String(50), index=True)  # base model name
    # The StrangeLoop frontend's own fields (migration 0004): the local (Ollama) base model it
    # picked, the Ollama model it creates for the persona, and a base model name it shows.
    localmodel_name: Mapped[str | None] = mapped_column(String(100))
    ollama_model_name: Mapped[str | None] = mapped_column(String(100))
    base_model_name: Mapped[str | None] = mapped_column(String(100))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_time: Mapped[datetime | None] = mapped_column()

    model_file: Mapped[ModelFile | None] = relationship()
    ai_online: Mapped[ModelAiOnline | None] = relationship()


class ModelConversation(Base):
    __tablename__ = "model_conversation"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str | None] = mapped_column(String(50), index=True)
    ai_name: Mapped[str | None] = mapped_column(String(50), index=True)
    model_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_time: Mapped[datetime | None] = mapped_column()

    messages: Mapped[list[ModelMessage]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        order_by="(ModelMessage.created_time, ModelMessage.id)",
        passive_deletes=True,
    )


class ModelMessage(Base):
    __tablename__ = "model_message"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(50))
    content: Mapped[str] = mapped_column(Text)
    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_conversation.id", ondelete="CASCADE"), index=True
    )
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    created_time: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    conversation: Mapped[ModelConversation] = relationship(back_populates="messages")


# --- quota policy: academy allowances on a schedule ---------------------------------------


class Allowance(Base):
    """A scheduled grant: every user of an academy (or of all academies, `academy` NULL)
    gets `tokens` / `pic_times` once per period — weekly, monthly, or per term (`terms`: a
    JSON list of [first_day, last_day]). Mode `top_up` raises a balance to the amount, `add`
    adds it; a carry cap first trims what is left from before (NULL: keep all)."""

    __tablename__ = "quota_allowances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    academy: Mapped[str | None] = mapped_column(String(64), index=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    period: Mapped[str] = mapped_column(String(16), default="monthly")  # weekly monthly term
    mode: Mapped[str] = mapped_column(String(16), default="top_up")  # top_up add
    carry_cap_tokens: Mapped[int | None] = mapped_column(BigInteger)
    carry_cap_pic_times: Mapped[int | None] = mapped_column(BigInteger)
    terms: Mapped[str | None] = mapped_column(Text)  # JSON [["2026-09-01", "2027-01-31"], ...]
    starts_on: Mapped[date | None] = mapped_column(Date)  # no period before the one holding this day
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column()


class AllowanceGrant(Base):
    """One user's grant of one allowance period: the unique row that makes it happen once.
    Written in the same transaction as the balance update and the ledger row."""

    __tablename__ = "quota_allowance_grants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    allowance_id: Mapped[int] = mapped_column(Integer)
    period_key: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(String(32))
    tokens_before: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times_before: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("allowance_id", "period_key", "user_id", name="uq_allowance_grant_period_user"),
        Index("ix_allowance_grants_run_user", "run_id", "user_id"),
    )


class AllowanceRun(Base):
    """A period of an allowance that some process started applying; `completed_at` once
    every user of the academy then had a grant row (later users get theirs on register)."""

    __tablename__ = "quota_allowance_runs"

    allowance_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_key: Mapped[str] = mapped_column(String(16), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()
    users: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    pic_times: Mapped[int] = mapped_column(BigInteger, default=0)
    actor: Mapped[str | None] = mapped_column(String(64))


# --- quota policy: prices, rate limits, connection routing --------------------------------


class ModelPrice(Base):
    """A model's price as multipliers of a token: quota units per prompt token and per
    completion token (no row: 1.0 / 1.0)."""

    __tablename__ = "model_prices"

    model_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_info.model_id", ondelete="CASCADE"), primary_key=True
    )
    prompt_price: Mapped[float] = mapped_column(Float, default=1.0)
    completion_price: Mapped[float] = mapped_column(Float, default=1.0)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EnginePrice(Base):
    """A recognition engine's price: picTimes per picture (kind picture) or tokens per minute
    of speech (kind voice). No row: the defaults (1 picTime; the voice settings)."""

    __tablename__ = "engine_prices"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # voice picture
    engine: Mapped[str] = mapped_column(String(64), primary_key=True)
    price: Mapped[float] = mapped_column(Float, default=1.0)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateLimit(Base):
    """Requests and tokens per minute for a user, an API key, or an academy's default
    (`scope` user | key | academy, `subject` the user id, key id or academy name)."""

    __tablename__ = "rate_limits"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateEvent(Base):
    """One admitted request in a rate-limit bucket (sliding window log, database backend)."""

    __tablename__ = "rate_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column()
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_rate_events_bucket_at", "bucket", "at"),)


class ModelRoute(Base):
    """One of several connections a model may use: the highest `priority` group first,
    weighted at random inside it."""

    __tablename__ = "model_routes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(Integer, ForeignKey("model_info.model_id", ondelete="CASCADE"), index=True)
    connection_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_ai_online.ai_id", ondelete="CASCADE"), index=True
    )
    priority: Mapped[int] = mapped_column(Integer, default=0)
    weight: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (UniqueConstraint("model_id", "connection_id", name="uq_model_route"),)


class ConnectionHealth(Base):
    """A connection's failure state, shared by every replica: consecutive failures, cooldown,
    and a disabling after 401/403 (with the reason shown to admins)."""

    __tablename__ = "connection_health"

    connection_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("model_ai_online.ai_id", ondelete="CASCADE"), primary_key=True
    )
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    cooldown_until: Mapped[datetime | None] = mapped_column()
    disabled_reason: Mapped[str | None] = mapped_column(String(255))
    disabled_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConnectionCall(Base):
    """One upstream attempt on a connection (for requests / errors / p50 in the last hour)."""

    __tablename__ = "connection_calls"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_connection_calls_conn_at", "connection_id", "at"),)
