"""iFlytek document OCR over HTTP — protocol `iflytek-ocr`.

`POST {ai_api}` (e.g. `http://api.xf-yun.com/v1/private/hh_ocr_recognize_doc`) to the URL
signed with method POST, body:
`{"header": {"app_id", "status": 3}, "parameter": {"hh_ocr_recognize_doc":
{"recognizeDocumentRes": {"encoding": "utf8", "compress": "raw", "format": "json"}}},
"payload": {"image": {"encoding": "jpg"|"png"|"bmp", "image": base64, "status": 3}}}`.
The answer's `payload.recognizeDocumentRes.text` is base64 of a JSON document whose
`whole_text` is the text. A WebP upload is sent re-encoded as PNG.
"""

from __future__ import annotations

import base64
import json

import httpx

from backend.providers import netguard
from backend.providers.base import ProviderError, ProviderTimeout
from backend.providers.iflytek import signed_url
from backend.providers.iflytek_keys import IflytekKeys
from backend.providers.recognition import Picture

PROTOCOL = "iflytek-ocr"
ENCODINGS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}


class IflytekOCR:
    """One configured OCR connection. Its HTTP client never follows a redirect, ignores
    environment proxies and, given a `netguard.Guard`, connects only to checked addresses."""

    def __init__(
        self,
        url: str,
        keys: IflytekKeys,
        *,
        name: str = PROTOCOL,
        timeout: float = 30.0,
        guard: netguard.Guard | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.keys = keys
        self.timeout = timeout
        transport = guard.transport() if guard is not None else httpx.HTTPTransport()
        self.client = httpx.Client(transport=transport, follow_redirects=False, trust_env=False, timeout=timeout)

    def request_body(self, picture: Picture) -> dict:
        data, fmt = picture.encoded(tuple(ENCODINGS))
        return {
            "header": {"app_id": self.keys.app_id, "status": 3},
            "parameter": {
                "hh_ocr_recognize_doc": {
                    "recognizeDocumentRes": {"encoding": "utf8", "compress": "raw", "format": "json"}
                }
            },
            "payload": {"image": {"encoding": ENCODINGS[fmt], "image": base64.b64encode(data).decode(), "status": 3}},
        }

    def read(self, picture: Picture) -> str:
        url = signed_url(self.url, self.keys.api_key, self.keys.api_secret, "POST")
        try:
            response = self.client.post(url, json=self.request_body(picture))
        except httpx.TimeoutException:
            raise ProviderTimeout(f"iFlytek OCR did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"iFlytek OCR connection failed: {type(exc).__name__}") from None
        if response.is_redirect:
            raise ProviderError(
                f"iFlytek OCR answered HTTP {response.status_code}, a redirect; redirects are not followed, "
                "point the connection at the final URL"
            )
        if response.status_code in (401, 403):
            raise ProviderError(
                f"iFlytek OCR refused the request (HTTP {response.status_code}); "
                "check the app id, API key and API secret"
            )
        try:
            answer = response.json()
        except ValueError:
            raise ProviderError(f"iFlytek OCR answered HTTP {response.status_code} without JSON") from None
        header = answer.get("header") or {}
        code = header.get("code", -1 if response.status_code != 200 else 0)
        if code != 0:
            raise ProviderError(f"iFlytek OCR error {code}: {header.get('message', 'no message')}")
        try:
            encoded = answer["payload"]["recognizeDocumentRes"]["text"]
            document = json.loads(base64.b64decode(encoded))
            return str(document["whole_text"])
        except (KeyError, TypeError, ValueError):
            raise ProviderError("iFlytek OCR answered without payload.recognizeDocumentRes.text.whole_text") from None
