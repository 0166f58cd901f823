"""Users and admins: registration, login, admin CRUD, logout and password changes.

Ids are stable: renaming a user never changes its id (the original did, by accident).
Logout and password change bump `token_version`, which revokes every token issued before;
a password change (the user's own or an admin's) also revokes the user's API keys, which
is what a user changing a leaked password expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend import audit, security
from backend.accounts.identity import actor_of
from backend.billing import allowances, quota
from backend.config import Settings
from backend.errors import ServiceError, conflict, forbidden
from backend.names import check_name
from db.models import Admin, ApiKey, User
from db.session import rowcount

PASSWORD_MIN = 6


def check_password(password: str, code: str) -> str:
    if not isinstance(password, str) or len(password) < PASSWORD_MIN:
        raise ServiceError(code, f"password must have at least {PASSWORD_MIN} characters", 422)
    if len(password.encode()) > security.BCRYPT_MAX_BYTES:
        raise ServiceError(code, f"password must be at most {security.BCRYPT_MAX_BYTES} bytes", 422)
    return password


def _hash(settings: Settings, password: str) -> str:
    return security.hash_password(password, settings.bcrypt_rounds)


@dataclass(frozen=True)
class NewPassword:
    """A new password that passed the rules, already hashed. Routes make it before their
    write transaction opens: bcrypt takes a noticeable time, and on SQLite an open
    transaction holds the database's write lock (audit finding 7)."""

    hash: str = field(repr=False)


def new_password(settings: Settings, password: str, code: str) -> NewPassword:
    """Check `password` against the rules and hash it; needs no session."""
    check_password(password, code)
    return NewPassword(_hash(settings, password))


def _stored_hash(settings: Settings, password: str | NewPassword, code: str) -> str:
    """The hash to store: a NewPassword's, or (the CLI, the dashboard) one made here. The
    services make it before their first query, so a caller's transaction that has not yet
    touched the database (the dashboard's `run_action`) holds no connection meanwhile."""
    return password.hash if isinstance(password, NewPassword) else new_password(settings, password, code).hash


# --- users -------------------------------------------------------------------------------


def get_user_by_name(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def require_user(session: Session, user_id: str) -> User:
    """The user with this id; USER_NOT_FOUND (404) when there is none."""
    user = session.get(User, user_id)
    if user is None:
        raise ServiceError("USER_NOT_FOUND", f"user {user_id} not found", 404)
    return user


def require_user_by_name(session: Session, username: str, code: str = "USER_NOT_FOUND") -> User:
    user = get_user_by_name(session, username)
    if user is None:
        raise ServiceError(code, f"user {username!r} not found", 404)
    return user


def register_user(
    session: Session,
    settings: Settings,
    *,
    username: str,
    password: str | NewPassword,
    email: str | None = None,
    academy: str | None = None,
) -> User:
    """Self-registration: a new user with 0 tokens and 0 picTimes."""
    return create_user(
        session, settings, username=username, password=password, email=email, academy=academy, error="REGISTER_ERROR"
    )


def create_user(
    session: Session,
    settings: Settings,
    *,
    username: str,
    password: str | NewPassword,
    email: str | None = None,
    academy: str | None = None,
    tokens: int = 0,
    pic_times: int = 0,
    actor: str | None = None,
    error: str = "ADD_USER_ERROR",
) -> User:
    """Create a user; initial tokens / picTimes are granted through the ledger."""
    username = check_name(username, error, "username")
    password_hash = _stored_hash(settings, password, error)
    if tokens < 0 or pic_times < 0:
        raise ServiceError(error, "tokens and picTimes cannot be negative", 422)
    if get_user_by_name(session, username) is not None:
        raise conflict("USER_NAME_REPEAT", f"username {username!r} is taken")
    user = User(
        username=username,
        password_hash=password_hash,
        email=email or None,
        academy=(academy or "").strip() or None,
        tokens=0,
        pic_times=0,
    )
    session.add(user)
    session.flush()
    if tokens or pic_times:
        quota.grant(session, user_id=user.id, tokens=tokens, pic_times=pic_times, actor=actor, note="initial quota")
    allowances.on_new_user(session, user.id, user.academy)  # quota policy: the current period's allowances
    if actor:
        audit.record(
            session,
            actor=actor,
            action="add_user",
            target_type="user",
            target_id=user.id,
            detail={"username": username, "academy": user.academy, "tokens": tokens, "pic_times": pic_times},
        )
    return user


def modify_user(
    session: Session,
    settings: Settings,
    *,
    target_username: str,
    actor: str,
    new_username: str | None = None,
    new_password: str | NewPassword | None = None,
    new_email: str | None = None,
    new_academy: str | None = None,
    new_tokens: int | None = None,
    new_pic_times: int | None = None,
    new_status: str | None = None,
) -> User:
    """Admin edit of a user. Balances go through the quota service; the id never changes."""
    password_hash = _stored_hash(settings, new_password, "MODIFY_USER_ERROR") if new_password else None
    user = require_user_by_name(session, target_username)
    changes: dict[str, object] = {}
    if new_username is not None and new_username.strip() != user.username:
        new_username = check_name(new_username, "MODIFY_USER_ERROR", "username")
        if get_user_by_name(session, new_username) is not None:
            raise conflict("USER_NAME_REPEAT", f"username {new_username!r} is taken")
        changes["username"] = (user.username, new_username)
        user.username = new_username
    if password_hash is not None:
        user.password_hash = password_hash
        user.token_version += 1
        revoked = revoke_api_keys(session, user_id=user.id)
        changes["password"] = "changed"
        if revoked:
            changes["api_keys_revoked"] = revoked
    if new_email is not None and new_email != (user.email or ""):
        changes["email"] = (user.email, new_email)
        user.email = new_email or None
    if new_academy is not None and new_academy.strip() != (user.academy or ""):
        changes["academy"] = (user.academy, new_academy.strip())
        user.academy = new_academy.strip() or None
    if new_status is not None and new_status != user.status:
        if new_status not in ("active", "disabled"):
            raise ServiceError("MODIFY_USER_ERROR", "status must be 'active' or 'disabled'", 422)
        changes["status"] = (user.status, new_status)
        user.status = new_status
        if new_status == "disabled":
            user.token_version += 1
    session.flush()
    if new_tokens is not None or new_pic_times is not None:
        before = quota.balance(session, user.id)
        after = quota.set_balance(
            session, user_id=user.id, tokens=new_tokens, pic_times=new_pic_times, actor=actor, note="modify_normal_user"
        )
        if after != before:
            changes["tokens"] = (before.tokens, after.tokens)
            changes["pic_times"] = (before.pic_times, after.pic_times)
    if changes:
        audit.record(session, actor=actor, action="modify_user", target_type="user", target_id=user.id, detail=changes)
    return user


def delete_user(session: Session, *, username: str, actor: str) -> None:
    user = require_user_by_name(session, username)
    audit.record(
        session,
        actor=actor,
        action="delete_user",
        target_type="user",
        target_id=user.id,
        detail={"username": user.username, "tokens": user.tokens, "pic_times": user.pic_times},
    )
    session.delete(user)


def verify_password_change(settings: Settings, current_hash: str, old_password: str, new: str) -> NewPassword:
    """A user's own password change, step 1 (no transaction open): the current password
    checked against `current_hash`, the new one checked and hashed."""
    if not security.verify_password(old_password, current_hash):
        raise ServiceError("LOGIN_ERROR", "the current password is wrong", 401)
    return new_password(settings, new, "MODIFY_USER_ERROR")


def change_user_password(session: Session, *, user_id: str, checked_hash: str, new: NewPassword) -> User:
    """Step 2 (a short write): store the new hash, revoking every token and API key issued
    before. `checked_hash` is the hash step 1 checked the old password against; when the
    password changed meanwhile, the change is refused (401) rather than applied on a check
    of a password that is no longer current."""
    user = session.get(User, user_id)
    if user is None or user.password_hash != checked_hash:
        raise ServiceError("LOGIN_ERROR", "the password was changed meanwhile; sign in again", 401)
    user.password_hash = new.hash
    user.token_version += 1
    revoked = revoke_api_keys(session, user_id=user.id)
    audit.record(
        session,
        actor=actor_of(user),
        action="change_password",
        target_type="user",
        target_id=user.id,
        detail={"api_keys_revoked": revoked},
    )
    return user


def revoke_api_keys(session: Session, *, user_id: str) -> int:
    """Revoke every active API key of the user (after a password change); how many."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) or 0


def revoke_user_tokens(session: Session, *, user_id: str) -> None:
    """Logout: every token issued to this user so far stops working."""
    session.execute(update(User).where(User.id == user_id).values(token_version=User.token_version + 1))


# --- sign-in in three steps, so no transaction is open while bcrypt runs ------------------


@dataclass(frozen=True)
class Credentials:
    """What a sign-in needs to know about an account before checking its password."""

    kind: str  # user | admin
    id: str | int
    password_hash: str


def find_credentials(session: Session, kind: str, name: str) -> Credentials | None:
    """Step 1 (a read): the account signing in as `name`, if there is one."""
    model, name_col = (User, User.username) if kind == "user" else (Admin, Admin.name)
    row = session.execute(select(model.id, model.password_hash).where(name_col == name)).first()
    return None if row is None else Credentials(kind, row.id, row.password_hash)


def check_credentials(settings: Settings, found: Credentials | None, password: str) -> tuple[bool, str | None]:
    """Step 2 (no transaction open): whether the password matches, and the bcrypt hash to
    store instead of an imported MD5 one. An unknown name gets the same bcrypt work (a
    dummy hash of the configured cost), so timing tells no names apart."""
    if found is None:
        security.burn_password_check(password, settings.bcrypt_rounds)
        return False, None
    if not security.verify_password(password, found.password_hash):
        return False, None
    return True, (_hash(settings, password) if security.needs_rehash(found.password_hash) else None)


def signed_in_account(session: Session, found: Credentials, new_hash: str | None) -> User | Admin | None:
    """Step 3 (a short write): the account whose password was checked, with an imported
    hash replaced; None when the account changed its password (or went) meanwhile."""
    account: User | Admin | None = session.get(User, found.id) if found.kind == "user" else session.get(Admin, found.id)
    if account is None or account.password_hash != found.password_hash:
        return None
    if new_hash is not None:
        account.password_hash = new_hash
    return account


# --- admins ------------------------------------------------------------------------------


def get_admin_by_name(session: Session, name: str) -> Admin | None:
    return session.scalar(select(Admin).where(Admin.name == name))


def require_admin_by_name(session: Session, name: str, code: str) -> Admin:
    admin = get_admin_by_name(session, name)
    if admin is None:
        raise ServiceError(code, f"admin {name!r} not found", 404)
    return admin


def create_admin(
    session: Session,
    settings: Settings,
    *,
    name: str,
    password: str | NewPassword,
    is_super: bool = False,
    actor: str | None,
) -> Admin:
    name = check_name(name, "ADD_ADMIN_ERROR", "admin name")
    password_hash = _stored_hash(settings, password, "ADD_ADMIN_ERROR")
    if get_admin_by_name(session, name) is not None:
        raise conflict("USER_NAME_REPEAT", f"admin name {name!r} is taken")
    admin = Admin(name=name, password_hash=password_hash, is_super=is_super)
    session.add(admin)
    session.flush()
    if actor:
        audit.record(
            session,
            actor=actor,
            action="add_admin",
            target_type="admin",
            target_id=str(admin.id),
            detail={"name": name, "is_super": is_super},
        )
    return admin


def modify_admin(
    session: Session,
    settings: Settings,
    *,
    target: str,
    actor: str,
    new_name: str | None = None,
    new_password: str | NewPassword | None = None,
) -> Admin:
    password_hash = _stored_hash(settings, new_password, "MODIFY_ADMIN_ERROR") if new_password else None
    admin = require_admin_by_name(session, target, "MODIFY_ADMIN_ERROR")
    changes: dict[str, object] = {}
    if new_name and new_name.strip() != admin.name:
        new_name = check_name(new_name, "MODIFY_ADMIN_ERROR", "admin name")
        if get_admin_by_name(session, new_name) is not None:
            raise conflict("USER_NAME_REPEAT", f"admin name {new_name!r} is taken")
        changes["name"] = (admin.name, new_name)
        admin.name = new_name
    if password_hash is not None:
        admin.password_hash = password_hash
        admin.token_version += 1
        changes["password"] = "changed"
    if changes:
        audit.record(
            session, actor=actor, action="modify_admin", target_type="admin", target_id=str(admin.id), detail=changes
        )
    return admin


def delete_admin(session: Session, *, target: str, actor: str) -> None:
    """Delete a normal admin. A super admin cannot be deleted (so the last one never is)."""
    admin = require_admin_by_name(session, target, "DELETE_ADMIN_ERROR")
    if admin.is_super:
        raise forbidden("a super admin cannot be deleted")
    audit.record(
        session,
        actor=actor,
        action="delete_admin",
        target_type="admin",
        target_id=str(admin.id),
        detail={"name": admin.name},
    )
    session.delete(admin)


def admin_names(session: Session) -> list[str]:
    """Every admin's name, in order."""
    return list(session.scalars(select(Admin.name).order_by(Admin.name)))


def count_super_admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Admin).where(Admin.is_super.is_(True))) or 0


def revoke_admin_tokens(session: Session, *, admin_id: int) -> None:
    session.execute(update(Admin).where(Admin.id == admin_id).values(token_version=Admin.token_version + 1))
