"""Dashboard sign-in: streamlit-authenticator over Meteor's own accounts.

- Credentials come from the database on each run. Rather than loading every user (there
  may be 100,000), the authenticator gets an `AccountDirectory`: a dict that loads the one
  account it is asked about — admins from `admins`, users from `users`, with their bcrypt
  hashes, which the authenticator checks as they are.
- The signed-in account is an `accounts.identity.Principal`, as for the API and the playground.
- The cookie (signed with `Settings.cookie_key`) also carries the account kind, its id,
  its identity stamp and its `token_version`, and is honoured only while the account with
  that id still has that stamp, that version and the cookie's name: a cookie never signs in
  a different account that was later registered under the same name (or given the id).
  Logout and password change bump `token_version` (the same revocation the API uses), and
  every run compares the session's version with the database: a revoked cookie or session
  stops working at once, on every browser, not only where the user clicked "sign out".
- Failed sign-ins are counted per account in `login_attempts` (for the authenticator's
  limit) and charged to the API's per-account login counter too.
- Importing this module imports neither SQLAlchemy nor the models (they are imported where
  an account is read): a fresh browser's sign-in form needs none of them, and on a dashboard
  process's first run they would otherwise be imported before the form is drawn.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt

from backend.accounts import identity
from backend.accounts.identity import Principal
from backend.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session, sessionmaker

    from backend.config import Settings

COOKIE_NAME = "meteor_dashboard"
COOKIE_DAYS = 7.0
KINDS = ("admin", "user")

# session-state keys owned by the sign-in gate
KIND_KEY = "meteor_login_kind"
ACCOUNT_KEY = "meteor_account"
VERSION_KEY = "meteor_session_version"
REISSUE_COOKIE_KEY = "meteor_reissue_cookie"


def find_account(session: Session, kind: str, login_name: str) -> tuple[Principal, str] | None:
    """The account signing in as `login_name` and its password hash. The authenticator
    lower-cases what was typed, so an exact match is tried first, then a unique
    case-insensitive one."""
    if kind not in KINDS or not login_name:
        return None
    from sqlalchemy import func, select

    from db.models import Admin, User

    model, name_col = (Admin, Admin.name) if kind == "admin" else (User, User.username)
    row = session.scalar(select(model).where(name_col == login_name))
    if row is None:
        rows = session.scalars(select(model).where(func.lower(name_col) == login_name.lower()).limit(2)).all()
        row = rows[0] if len(rows) == 1 else None
    if row is None:
        return None
    assert isinstance(row, (Admin, User))  # select(model) over either model is typed as their Base
    return Principal.of(row), row.password_hash


def load_account(session: Session, kind: str, account_id: str) -> Principal | None:
    """The current state of an account by id (one primary-key read), whatever its status."""
    return identity.load_principal(session, kind, account_id)


def failed_logins(session: Session, settings: Settings, kind: str, name: str) -> int:
    """Failures of this account inside the login window (shared with the API)."""
    from sqlalchemy import func, select

    from backend.accounts import login_limits as ratelimit
    from db.models import LoginAttempt

    account, _ = ratelimit.login_subjects(kind, name, None)
    since = datetime.now(UTC) - timedelta(seconds=settings.login_window_seconds)
    return int(
        session.scalar(
            select(func.count())
            .select_from(LoginAttempt)
            .where(LoginAttempt.subject == account, LoginAttempt.at >= since)
        )
        or 0
    )


class AccountDirectory(dict):
    """The authenticator's `credentials["usernames"]`, filled on demand from the database.

    Only the accounts the authenticator asks about are loaded (one indexed read each), so a
    run costs the same with 10 users or 100,000."""

    def __init__(self, maker: Callable[[], Session], settings: Settings, kind: str) -> None:
        """`maker` opens a session (a sessionmaker, or a function that makes one on first use)."""
        super().__init__()
        self.maker = maker
        self.settings = settings
        self.kind = kind

    def _load(self, name: object) -> dict[str, Any] | None:
        if not isinstance(name, str):
            return None
        key = (self.kind, name)
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        with self.maker() as session:
            found = find_account(session, self.kind, name)
            failures = failed_logins(session, self.settings, self.kind, found[0].name) if found else 0
        entry = None
        if found is not None:
            account, password_hash = found
            entry = {
                "name": account.name,
                "password": password_hash,
                "email": None,
                "roles": [account.role],
                "failed_login_attempts": failures,
                "meteor_failures_at_load": failures,
                "meteor_account": account,
            }
        dict.__setitem__(self, key, entry)
        return entry

    def __contains__(self, name: object) -> bool:
        return self._load(name) is not None

    def __getitem__(self, name: object) -> dict[str, Any]:
        entry = self._load(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def get(self, name: object, default: Any = None) -> Any:
        entry = self._load(name)
        return default if entry is None else entry

    def __bool__(self) -> bool:
        return True

    def loaded(self) -> list[dict[str, Any]]:
        """The entries loaded during this run (to record failed attempts)."""
        return [e for e in dict.values(self) if e is not None]


def encode_cookie(
    settings: Settings,
    *,
    username: str,
    kind: str,
    version: int,
    account_id: str,
    identity: str,
    days: float = COOKIE_DAYS,
) -> str:
    """The re-authentication cookie: the authenticator's own claims plus the account's kind,
    id, identity stamp and token version."""
    exp = (datetime.now() + timedelta(days=days)).timestamp()
    claims = {
        "username": username,
        "exp_date": exp,
        "kind": kind,
        "aid": str(account_id),
        "idn": identity,
        "ver": version,
    }
    return jwt.encode(claims, settings.secret("cookie_key"), algorithm="HS256")


def verify_cookie(session: Session, settings: Settings, claims: dict[str, Any] | None) -> Principal | None:
    """The account a decoded cookie still stands for, or None when it was revoked (version
    behind the database), names a disabled, deleted, renamed or different account (the id
    and identity stamp must match, not only the name), or lacks Meteor's claims."""
    if not claims or claims.get("kind") not in KINDS or not isinstance(claims.get("ver"), int):
        return None
    if not isinstance(claims.get("aid"), str) or not isinstance(claims.get("idn"), str) or not claims["idn"]:
        return None
    account = load_account(session, claims["kind"], claims["aid"])
    if account is None or not hmac.compare_digest(account.identity, claims["idn"]):
        return None
    # the authenticator signs in whatever name the cookie carries; it must still be this account's
    found = find_account(session, claims["kind"], str(claims.get("username", "")))
    if found is None or found[0].id != account.id:
        return None
    if account.token_version != claims["ver"] or account.status != "active":
        return None
    return account


class RevocableCookie:
    """Stands in for the authenticator's cookie controller: writes Meteor's claims into the
    cookie and refuses (and deletes) a cookie the database has revoked."""

    def __init__(self, inner: Any, directory: AccountDirectory, state: Any) -> None:
        self.inner = inner
        self.directory = directory
        self.state = state

    def get_cookie(self) -> dict[str, Any] | None:
        claims = self.inner.get_cookie()
        if not claims:
            return None
        with self.directory.maker() as session:
            account = verify_cookie(session, self.directory.settings, claims)
        if account is None:
            self.inner.delete_cookie()
            return None
        self.directory.kind = account.kind
        self.state[KIND_KEY] = account.kind
        self.state[VERSION_KEY] = account.token_version
        return claims

    def set_cookie(self) -> None:
        model = self.inner.cookie_model
        if not model.cookie_expiry_days:
            return
        entry = self.directory.get(self.state.get("username"))
        if entry is None:
            return
        account: Principal = entry["meteor_account"]
        token = encode_cookie(
            self.directory.settings,
            username=self.state["username"],
            kind=account.kind,
            version=account.token_version,
            account_id=account.id,
            identity=account.identity,
            days=model.cookie_expiry_days,
        )
        model.cookie_manager.set(
            model.cookie_name, token, expires_at=datetime.now() + timedelta(days=model.cookie_expiry_days)
        )

    def delete_cookie(self) -> None:
        self.inner.delete_cookie()


def build_authenticator(settings: Settings, maker: Callable[[], Session], state: Any) -> tuple[Any, AccountDirectory]:
    """A streamlit-authenticator `Authenticate` whose credentials are the database."""
    import streamlit_authenticator as stauth

    credentials: dict[str, Any] = {"usernames": {}}
    authenticator = stauth.Authenticate(
        credentials,
        COOKIE_NAME,
        settings.secret("cookie_key"),
        COOKIE_DAYS,
        auto_hash=False,
        login_sleep_time=0,  # the cookie is read from the request, no component round-trip to wait for
    )
    directory = AccountDirectory(maker, settings, state.get(KIND_KEY, "admin"))
    # the authenticator keeps (and mutates) this same dict: swap in the on-demand directory
    credentials["usernames"] = directory
    authenticator.cookie_controller = RevocableCookie(authenticator.cookie_controller, directory, state)
    return authenticator, directory


def record_failures(maker: sessionmaker, directory: AccountDirectory) -> None:
    """Store the failed attempts the authenticator counted during this run (it counts in the
    entry it was given; the entry started from the database's count)."""
    new = [
        entry["meteor_account"]
        for entry in directory.loaded()
        if entry.get("failed_login_attempts", 0) > entry["meteor_failures_at_load"]
    ]
    if not new:
        return
    from backend.accounts import login_limits as ratelimit

    with maker.begin() as session:
        for account in new:
            subject, _ = ratelimit.login_subjects(account.kind, account.name, None)
            ratelimit.record_failure(session, subject, None)
            ratelimit.charge_account(session, account.kind, account.name)


def signed_in(maker: sessionmaker, kind: str, name: str) -> None:
    """A successful sign-in forgives the account's earlier failures."""
    from backend.accounts import login_limits as ratelimit

    with maker.begin() as session:
        subject, _ = ratelimit.login_subjects(kind, name, None)
        ratelimit.clear_account(session, subject)


def check_session(session: Session, kind: str, account_id: str, version: int) -> Principal | None:
    """The account if the session's version still matches the database and it may sign in."""
    account = load_account(session, kind, account_id)
    if account is None or account.token_version != version or account.status != "active":
        return None
    return account


def revoke(session: Session, account: Principal) -> None:
    """Sign-out: every session, cookie and API token of this account issued so far stops working."""
    from backend.accounts import service as accounts

    if account.kind == "admin":
        accounts.revoke_admin_tokens(session, admin_id=int(account.id))
    else:
        accounts.revoke_user_tokens(session, user_id=account.id)


def change_password(
    maker: sessionmaker, settings: Settings, account: Principal, *, old_password: str, new_password: str
) -> int:
    """Change the signed-in account's own password; returns the new token version (every
    earlier session and token is revoked). A read, the bcrypt work with no transaction open
    (on SQLite one would hold the write lock), then a short write (audit finding 7)."""
    from sqlalchemy import select

    from backend import security
    from backend.accounts import service as accounts
    from db.models import Admin, User
    from db.session import read_only

    model = User if account.kind == "user" else Admin
    key = account.id if account.kind == "user" else int(account.id)
    with maker() as session:
        read_only(session)
        checked_hash = session.scalar(select(model.password_hash).where(model.id == key))
    if checked_hash is None:
        raise ServiceError("USER_NOT_FOUND", "account not found", 404)
    if account.kind == "user":
        new = accounts.verify_password_change(settings, checked_hash, old_password, new_password)
        with maker.begin() as session:
            user = accounts.change_user_password(session, user_id=account.id, checked_hash=checked_hash, new=new)
            return user.token_version
    if not security.verify_password(old_password, checked_hash):
        raise ServiceError("LOGIN_ERROR", "the current password is wrong", 401)
    new = accounts.new_password(settings, new_password, "MODIFY_ADMIN_ERROR")
    with maker.begin() as session:
        admin = session.get(Admin, key)
        if admin is None or admin.password_hash != checked_hash:
            raise ServiceError("LOGIN_ERROR", "the password was changed meanwhile; sign in again", 401)
        accounts.modify_admin(session, settings, target=admin.name, actor=account.actor, new_password=new)
        return admin.token_version


def playground_token(settings: Settings, account: Principal) -> str:
    """A short-lived signed token that signs the playground in as this account."""
    from backend import security

    return security.issue_token(
        settings,
        subject=account.id,
        role="user" if account.kind == "user" else "admin",
        kind="playground",
        version=account.token_version,
        identity=account.identity,
        ttl=timedelta(seconds=settings.playground_token_seconds),
    )


def playground_url(settings: Settings, token: str, language: str | None = None, browser_host: str | None = None) -> str:
    """Where the dashboard's browser finds the playground, already signed in. Without
    METEOR_PUBLIC_API_URL, the API is addressed by the host name the browser used for the
    dashboard (`localhost`, `127.0.0.1`, a LAN name), so the playground's cookie stays same-site."""
    from urllib.parse import urlencode, urlsplit

    host = "127.0.0.1"
    if browser_host:
        parsed = urlsplit(f"//{browser_host}")
        if parsed.hostname:
            host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    base = (settings.public_api_url or f"http://{host}:{settings.api_port}").rstrip("/")
    query = {"token": token}
    if language:
        query["lang"] = language
    return f"{base}/playground/?{urlencode(query)}"
