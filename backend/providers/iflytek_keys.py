"""iFlytek credentials as stored in one encrypted connection secret.

An iFlytek connection (`model_ai_online` row with protocol `iflytek-iat` or `iflytek-ocr`)
keeps its three credentials in the single `ai_token_encrypted` column, as either
`app_id:api_key:api_secret` or the JSON object
`{"app_id": "…", "api_key": "…", "api_secret": "…"}`; both are accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from backend.providers.base import ProviderError


@dataclass(frozen=True)
class IflytekKeys:
    app_id: str
    api_key: str
    api_secret: str

    def __repr__(self) -> str:  # never print a secret by accident
        return f"IflytekKeys(app_id={self.app_id!r}, api_key='…', api_secret='…')"

    def pack(self) -> str:
        """The plain text to encrypt into the connection's secret."""
        return f"{self.app_id}:{self.api_key}:{self.api_secret}"


def parse_keys(secret: str | None) -> IflytekKeys:
    """Unpack a connection secret; a malformed one is a configuration error (502)."""
    text = (secret or "").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            keys = IflytekKeys(str(data["app_id"]), str(data["api_key"]), str(data["api_secret"]))
        except (ValueError, KeyError, TypeError):
            keys = None
    else:
        parts = text.split(":")
        keys = IflytekKeys(*parts) if len(parts) == 3 else None
    if keys is None or not all((keys.app_id, keys.api_key, keys.api_secret)):
        raise ProviderError(
            'the iFlytek connection\'s secret must be app_id:api_key:api_secret or {"app_id", "api_key", "api_secret"}'
        )
    return keys
