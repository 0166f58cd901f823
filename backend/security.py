"""Password hashing, JWTs, API keys and encryption of provider secrets.

Passwords: bcrypt (so streamlit-authenticator can check the same hashes). Imported seed
hashes (unsalted MD5 of password + "#_#") are accepted once and rehashed at that login.
Tokens: HS256 JWTs carrying the subject's role, the token type, the subject's
`token_version` and its `identity` stamp; bumping the version (logout, password change)
revokes every token issued before, and the stamp (random per account, never reused) keeps
a deleted account's tokens from fitting another account that later gets its id or name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import jwt
from cryptography.fernet import Fernet, InvalidToken

from backend.config import Settings

LEGACY_MD5 = re.compile(r"^[0-9a-f]{32}$")
BCRYPT_MAX_BYTES = 72


def hash_password(password: str, rounds: int = 12) -> str:
    """A salted bcrypt hash of `password` (at most 72 bytes, checked by callers)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def legacy_md5(password: str) -> str:
    return hashlib.md5((password + "#_#").encode()).hexdigest()


def verify_password(password: str, stored: str) -> bool:
    """Check `password` against a bcrypt hash or an imported seed MD5 hash."""
    if LEGACY_MD5.match(stored):
        return hmac.compare_digest(legacy_md5(password), stored)
    try:
        return bcrypt.checkpw(password.encode()[:BCRYPT_MAX_BYTES], stored.encode())
    except ValueError:
        return False


def needs_rehash(stored: str) -> bool:
    return bool(LEGACY_MD5.match(stored))


# Real bcrypt hashes to compare against when the account does not exist, made with the
# configured cost (one per cost, made once), so a login for an unknown name does the same
# hashing work as one for a known name.
_DUMMY_HASHES: dict[int, str] = {}


def dummy_hash(rounds: int) -> str:
    found = _DUMMY_HASHES.get(rounds)
    if found is None:
        found = _DUMMY_HASHES.setdefault(rounds, hash_password(secrets.token_urlsafe(16), rounds))
    return found


def burn_password_check(password: str, rounds: int = 12) -> None:
    verify_password(password, dummy_hash(rounds))


# --- JWT ---------------------------------------------------------------------------------


class TokenError(Exception):
    pass


class WrongRole(TokenError):
    """A valid token of another role (an admin's where a user's is wanted, or the reverse)."""


def issue_token(
    settings: Settings,
    *,
    subject: str,
    role: str,
    kind: str,
    version: int,
    ttl: timedelta,
    identity: str | None = None,
    extra: dict | None = None,
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": subject,
        "role": role,  # "admin" | "user"
        "typ": kind,  # "access" | "refresh" | "playground"
        "ver": version,
        "idn": identity,  # the account's identity stamp
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    if extra:
        claims.update(extra)
    return jwt.encode(claims, settings.secret("jwt_secret"), algorithm="HS256")


def decode_token(settings: Settings, token: str, *, role: str, kind: str) -> dict[str, Any]:
    """The claims of a valid token of exactly this role and type; TokenError otherwise."""
    try:
        claims = jwt.decode(
            token,
            settings.secret("jwt_secret"),
            algorithms=["HS256"],
            options={"require": ["exp", "sub", "role", "typ", "ver"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("invalid token") from exc
    if claims.get("role") != role:
        raise WrongRole(f"not a {role} token")
    if claims.get("typ") != kind:
        raise TokenError(f"not an {kind} token" if kind[0] in "aeiou" else f"not a {kind} token")
    return claims


def same_account(claims: dict[str, Any], account: Any) -> bool:
    """Whether decoded claims still stand for `account` (an Admin or User row): the same
    token version and the same identity stamp."""
    stamp = getattr(account, "identity", None)
    return (
        claims.get("ver") == account.token_version
        and isinstance(stamp, str)
        and bool(stamp)
        and hmac.compare_digest(str(claims.get("idn") or ""), stamp)
    )


# --- API keys ----------------------------------------------------------------------------

API_KEY_PREFIX = "sk-"


def new_api_key() -> tuple[str, str, str]:
    """(the key shown once, its SHA-256 for storage, a short display prefix)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key), key[:7] + "…"


def hash_api_key(key: str) -> str:
    # API keys carry 256 random bits, so a fast hash is safe and keeps lookups indexable.
    return hashlib.sha256(key.encode()).hexdigest()


# --- provider secrets --------------------------------------------------------------------


def encrypt_secret(settings: Settings, plain: str | None) -> str | None:
    if not plain:
        return None
    return Fernet(settings.secret("secret_key").encode()).encrypt(plain.encode()).decode()


def decrypt_secret(settings: Settings, stored: str | None) -> str | None:
    if not stored:
        return None
    try:
        return Fernet(settings.secret("secret_key").encode()).decrypt(stored.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with METEOR_SECRET_KEY") from exc


def mask_secret(plain: str | None) -> str | None:
    """`sk-…abcd`: enough to recognise a key, never enough to use it."""
    if not plain:
        return None
    head = plain[:3] if len(plain) > 12 else ""
    return f"{head}…{plain[-4:]}" if len(plain) > 8 else "…"
