"""Settings: one validated object built from `METEOR_*` environment variables and `.env`.

Secrets that are not given (JWT secret, the key that encrypts provider secrets, the
dashboard cookie key) are generated once into `<data_dir>/secrets.json` (mode 0600) and
reused on every start, so several processes on one data dir agree. A known placeholder
or a too-short secret is refused at start.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecretName = Literal["jwt_secret", "secret_key", "cookie_key"]

PLACEHOLDERS = {
    "changeme",
    "change-me",
    "secret",
    "your-secret",
    "your_secret",
    "placeholder",
    "xxx",
    "test",
    "password",
    "jwt-secret",
    "please-change",
}
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METEOR_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    redis_url: str | None = None

    jwt_secret: SecretStr | None = None
    secret_key: SecretStr | None = Field(default=None, description="Fernet key for provider secrets")
    cookie_key: SecretStr | None = None

    # Comma-separated addresses / networks of the reverse proxies whose X-Forwarded-For is
    # believed (the client address the login limits count). Empty: no proxy is trusted.
    trusted_proxies: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ui_port: int = 8501
    public_api_url: str | None = None  # what the dashboard's browser uses to reach the playground
    # Origins whose pages may call the API (bearer-authenticated, so never with credentials): "*" (any),
    # a comma-separated list, or "" (no CORS). /playground (cookie-authenticated) is never opened.
    cors_origins: str = "*"
    public_ui_url: str | None = None  # the dashboard's own public address: the origin that embeds the playground
    browser_key_minutes: int = Field(default=60, ge=1, le=24 * 60)  # keys a user's browser gets for one model
    admin_password: SecretStr | None = None

    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    access_token_minutes: int = 60
    refresh_token_days: int = 7
    playground_token_seconds: int = 300
    # login admission (backend/accounts/login_limits.py): password checks per window
    login_max_failures_per_account_address: int = Field(default=5, ge=1)  # one account from one address
    login_max_failures_per_account: int = Field(default=20, ge=1)  # one account from unknown addresses
    login_max_failures_per_address: int = Field(default=20, ge=1)  # one address against any account
    login_window_seconds: int = Field(default=900, ge=1)
    login_retry_seconds: int = Field(default=3, ge=0)  # the same failed name + password again: not counted
    login_known_address_days: int = Field(default=90, ge=1)  # an address that signed in skips the looser limits

    query_page_size_max: int = 100
    reservation_ttl_seconds: int = 600
    sweeper_interval_seconds: int = 30

    language: str = "zh-CN"
    allowed_private_hosts: str = ""
    allow_loopback: bool = True  # aiApi may point at this machine (a local Ollama)
    # exact host:port upstreams users' OWN connections may reach although private (a campus
    # model server); empty: users reach public addresses only (audit finding 9)
    user_upstreams: str = ""
    voice_costs_quota: bool = False
    voice_tokens_per_second: int = 1
    legacy_uuid_auth: bool = False  # accept the seed's uuid + username instead of a Bearer token
    # seed-000 errors: "auto" answers HTTP 200 + the code to the original clients only (see
    # backend/api/envelope.py: original_client), "200" to every caller, "http" to none
    seed000_error_status: Literal["auto", "http", "200"] = "auto"
    upload_max_bytes: int = 10 * 1024 * 1024
    body_max_bytes: int = Field(default=64 * 1024, ge=1024)  # /auth /admin /user and the rest
    chat_body_max_bytes: int = Field(default=1024 * 1024, ge=1024)  # /textModel /v1 /model
    default_voice_engine: str = "embedded"
    voice_language: str = "auto"  # embedded voice engine: auto (detect Chinese or English), zh, en
    default_picture_engine: str = "embedded"
    default_max_tokens: int = 512
    model_titles: bool = True  # new conversations get a title written by their model, in the background
    ollama_url: str = "http://127.0.0.1:11434"
    embedded_queue_size: int = 32
    # requests the embedded llama.cpp engine decodes together in one batch (1: one at a time)
    embedded_parallel: int = Field(default=8, ge=1, le=64)
    model_concurrency: int = 2
    # the gateway (issue 9): API worker processes (None: one per CPU core), and requests in
    # flight per upstream connection in each worker (0: unbounded) before UPSTREAM_BUSY 503
    workers: int | None = Field(default=None, ge=1, le=64)
    upstream_concurrency: int = Field(default=1024, ge=0)
    # quota policy: failover across a model's connections (backend/catalog/routing.py)
    failover_max_attempts: int = Field(default=3, ge=1, le=10)
    connection_failure_threshold: int = Field(default=3, ge=1)
    connection_cooldown_seconds: int = Field(default=60, ge=1)

    @model_validator(mode="after")
    def _fill_and_check_secrets(self) -> Settings:
        missing = [n for n in ("jwt_secret", "secret_key", "cookie_key") if getattr(self, n) is None]
        if missing:
            stored = _load_or_create_secret_file(self.data_dir)
            for name in missing:
                setattr(self, name, SecretStr(stored[name]))
        for name in ("jwt_secret", "cookie_key"):
            _refuse_weak(name, getattr(self, name).get_secret_value())
        key = self.secret("secret_key")
        _refuse_weak("secret_key", key)
        try:
            if len(base64.urlsafe_b64decode(key.encode())) != 32:
                raise ValueError
        except ValueError as exc:
            raise ValueError("METEOR_SECRET_KEY must be a urlsafe-base64 Fernet key (32 bytes)") from exc
        return self

    def secret(self, name: SecretName) -> str:
        """The value of one of the three secrets, which `_fill_and_check_secrets` has filled when not given."""
        value: SecretStr | None = getattr(self, name)
        assert value is not None, f"{name} is filled at validation"
        return value.get_secret_value()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'meteor.db').resolve()}"

    @property
    def cors_origin_list(self) -> list[str]:
        """The allowed origins (`["*"]` for any); a trailing slash is dropped (browsers send none)."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies.split(",") if p.strip()]

    @model_validator(mode="after")
    def _check_trusted_proxies(self) -> Settings:
        try:
            _ = self.trusted_proxy_networks
        except ValueError as exc:
            raise ValueError(f"METEOR_TRUSTED_PROXIES: {exc}") from exc
        return self

    @property
    def user_upstream_set(self) -> set[str]:
        entries = (h.strip().lower().replace("[", "").replace("]", "") for h in self.user_upstreams.split(","))
        return {h for h in entries if h}

    @property
    def private_host_allowlist(self) -> set[str]:
        return {h.strip().lower() for h in self.allowed_private_hosts.split(",") if h.strip()}


def _refuse_weak(name: str, value: str) -> None:
    if value.strip().lower() in PLACEHOLDERS or len(value) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"METEOR_{name.upper()} is a placeholder or shorter than {MIN_SECRET_LENGTH} characters; "
            "unset it to have one generated, or give a strong random value"
        )


def _load_or_create_secret_file(data_dir: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "jwt_secret": secrets.token_urlsafe(48),
        "secret_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "cookie_key": secrets.token_urlsafe(48),
    }
    # Write a private temp file, then link it into place: of two processes starting at once,
    # exactly one wins and the other reads the winner's complete file.
    tmp = data_dir / f".secrets.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)
    try:
        os.link(tmp, path)
    except FileExistsError:
        values = json.loads(path.read_text())
    finally:
        tmp.unlink()
    return values


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built once from the environment."""
    return Settings()
