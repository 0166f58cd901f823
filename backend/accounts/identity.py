"""Who is asking, once for every front end: the API, the playground and the dashboard.

- `Principal`: a signed-in account — a user, an admin or a super admin — with its academy, its
  token version and its identity stamp, read from the database on every request.
- `resolve_token` / `authenticate_token`: a signed Meteor token (`backend.security`) of one of
  the given roles and one purpose (access, refresh, playground, playground_session) becomes the
  Principal it still stands for: the account exists, is active, and has the token's version and
  identity stamp (`security.same_account`). `resolve_token` answers None when it does not;
  `authenticate_token` raises the API's 401 / 403.
- `bearer_token`: the one reading of an `Authorization: Bearer …` header.
- `actor_of`: THE audit actor format, `<kind>:<name>` (`user:alice`, `admin:root`; a super
  admin is `admin:<name>` too). System actors are plain words (`backend/audit.py`).

Importing this module imports neither SQLAlchemy, the models nor the crypto libraries (they are
imported where a token is checked or an account read): the dashboard's sign-in form needs none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.errors import ServiceError, forbidden, unauthorized

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from backend.config import Settings

KINDS = ("user", "admin")  # the account tables, and the `role` claim of a token
REVOKED = "登录已失效（密码已修改或已退出），请重新登录 / token revoked; sign in again"


def actor_of(account: Any) -> str:
    """The audit actor of an account: a Principal, a User row or an Admin row → `<kind>:<name>`."""
    if isinstance(account, Principal):
        return account.actor
    from db.models import Admin

    return actor_for("admin", account.name) if isinstance(account, Admin) else actor_for("user", account.username)


def actor_for(kind: str, name: str) -> str:
    """`user:<name>` or `admin:<name>`: how an account appears in the audit log and the ledger."""
    return f"{kind}:{name}"


@dataclass(frozen=True)
class Principal:
    """A signed-in account as every front end sees it. `kind` is the account's table (user or
    admin, a token's role claim); `role` adds the super admin. `status` is the user's (an
    admin is always active); `identity` the account's stamp, so a token or cookie of a deleted
    namesake never fits."""

    kind: str  # user | admin
    id: str  # a user's uuid, an admin's integer id as text
    name: str  # a user's username, an admin's name
    is_super: bool = False
    academy: str | None = None
    status: str = "active"
    token_version: int = 0
    identity: str = ""

    @classmethod
    def of(cls, account: Any) -> Principal:
        """The Principal of a User or Admin row."""
        from db.models import Admin

        if isinstance(account, Admin):
            return cls(
                kind="admin",
                id=str(account.id),
                name=account.name,
                is_super=bool(account.is_super),
                token_version=account.token_version,
                identity=account.identity,
            )
        return cls(
            kind="user",
            id=account.id,
            name=account.username,
            academy=account.academy,
            status=account.status,
            token_version=account.token_version,
            identity=account.identity,
        )

    @property
    def role(self) -> str:
        """user | admin | super."""
        if self.kind == "user":
            return "user"
        return "super" if self.is_super else "admin"

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    @property
    def subject(self) -> str:
        """`user:<id>` / `admin:<id>`: the account by id (the playground's Gradio user name)."""
        return f"{self.kind}:{self.id}"

    @property
    def actor(self) -> str:
        """How this account appears in the audit log and the ledger: `user:<name>` / `admin:<name>`."""
        return actor_for(self.kind, self.name)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None for any other."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def account_row(session: Session, kind: str, account_id: str) -> Any:
    """The User or Admin row with this id (one primary-key read), or None."""
    from db.models import Admin, User

    if kind == "admin":
        try:
            return session.get(Admin, int(account_id))
        except (TypeError, ValueError):
            return None
    if kind == "user":
        return session.get(User, str(account_id))
    return None


def load_principal(session: Session, kind: str, account_id: str, *, active: bool = False) -> Principal | None:
    """The account as it is now, whatever its status (only an active one with `active`)."""
    row = account_row(session, kind, account_id)
    if row is None:
        return None
    principal = Principal.of(row)
    return None if active and not principal.is_active else principal


def _claims(settings: Settings, token: str, kinds: tuple[str, ...], purpose: str) -> dict[str, Any]:
    """The claims of a valid token of one of `kinds` and type `purpose`. A token whose role is
    none of them fails with the first kind's refusal; any other failure (signature, expiry,
    type) is the same whichever role was tried."""
    from backend import security

    first: security.TokenError | None = None
    for role in kinds:
        try:
            return security.decode_token(settings, token, role=role, kind=purpose)
        except security.WrongRole as exc:
            first = first or exc
    raise first or security.TokenError("invalid token")


def verify_token(
    session: Session, settings: Settings, token: str, *, kinds: tuple[str, ...] = KINDS, purpose: str = "access"
) -> tuple[Principal, dict[str, Any]]:
    """The active account a valid, unrevoked token of one of `kinds` and type `purpose` stands
    for, and the token's claims. 401 for a bad, expired or revoked token; 403 for a disabled user."""
    from backend import security

    try:
        claims = _claims(settings, token, kinds, purpose)
    except security.TokenError as exc:
        raise unauthorized(str(exc)) from None
    row = account_row(session, str(claims["role"]), str(claims["sub"]))
    if row is None or not security.same_account(claims, row):
        raise unauthorized(REVOKED)
    principal = Principal.of(row)
    if not principal.is_active:
        raise forbidden("this account is disabled")
    return principal, claims


def authenticate_token(
    session: Session, settings: Settings, token: str, *, kinds: tuple[str, ...] = KINDS, purpose: str = "access"
) -> Principal:
    """`verify_token`'s account: the API's check (401 / 403 when refused)."""
    return verify_token(session, settings, token, kinds=kinds, purpose=purpose)[0]


def resolve_token(
    session: Session, settings: Settings, token: str, *, kinds: tuple[str, ...] = KINDS, purpose: str = "access"
) -> Principal | None:
    """`authenticate_token`, answering None instead of refusing."""
    try:
        return authenticate_token(session, settings, token, kinds=kinds, purpose=purpose)
    except ServiceError:
        return None
