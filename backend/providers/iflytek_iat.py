"""iFlytek IAT dictation over websocket (Chinese, Mandarin) — protocol `iflytek-iat`.

The connection URL (`ai_api`, e.g. `wss://ws-api.xfyun.cn/v2/iat`) is signed with the
API key and secret (`backend.providers.iflytek.signed_url`, method GET). The first frame
carries `common.app_id` and the `business` parameters, every frame carries
`data.status` (0 first, 1 middle, 2 last), `data.format = audio/L16;rate=16000`,
`data.encoding = raw` and up to 8000 bytes of base64 audio; frames are paced
`frame_interval` seconds apart (40 ms, as iFlytek asks). The text is the concatenation of
every answer's `data.result.ws[].cw[].w`, until an answer with `data.status == 2`.

Given a `netguard.Guard`, the TCP connection is opened to the address the SSRF guard
checked (`resolve_checked`) and handed to the websocket client (`sock=`), which keeps the
host name for the Host header and TLS; a redirect answer is an error, never followed.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from urllib.parse import urlsplit

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from backend.providers import netguard
from backend.providers.base import ProviderError, ProviderTimeout
from backend.providers.iflytek import signed_url
from backend.providers.iflytek_keys import IflytekKeys

PROTOCOL = "iflytek-iat"
FRAME_BYTES = 8000
AUDIO_FORMAT = "audio/L16;rate=16000"


def _invalid_status(exc: BaseException) -> InvalidStatus | None:
    """The handshake's InvalidStatus behind `exc` (itself, its cause or its context)."""
    current: BaseException | None = exc
    for _ in range(5):
        if current is None:
            return None
        if isinstance(current, InvalidStatus):
            return current
        current = current.__cause__ or current.__context__
    return None


class IflytekIAT:
    """One configured IAT connection."""

    def __init__(
        self,
        url: str,
        keys: IflytekKeys,
        *,
        name: str = PROTOCOL,
        timeout: float = 30.0,
        frame_interval: float = 0.04,
        business: dict | None = None,
        guard: netguard.Guard | None = None,
    ) -> None:
        self.name = name
        self.guard = guard
        self.url = url
        self.keys = keys
        self.timeout = timeout
        self.frame_interval = frame_interval
        self.business = business or {"domain": "iat", "language": "zh_cn", "accent": "mandarin", "vad_eos": 10000}

    def frames(self, pcm: bytes) -> list[dict]:
        """The request frames for a clip, first to last."""
        chunks = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)] or [b""]
        frames = []
        for index, chunk in enumerate(chunks):
            data = {
                "status": 0 if index == 0 else 1,
                "format": AUDIO_FORMAT,
                "encoding": "raw",
                "audio": base64.b64encode(chunk).decode(),
            }
            frame: dict = {"data": data}
            if index == 0:
                frame = {"common": {"app_id": self.keys.app_id}, "business": self.business, "data": data}
            frames.append(frame)
        frames.append({"data": {"status": 2, "format": AUDIO_FORMAT, "encoding": "raw", "audio": ""}})
        return frames

    def transcribe(self, pcm: bytes) -> str:
        deadline = time.monotonic() + self.timeout
        url = signed_url(self.url, self.keys.api_key, self.keys.api_secret, "GET")
        try:
            sock = self._socket()
            with connect(url, sock=sock, open_timeout=self.timeout, close_timeout=2, max_size=4 * 1024 * 1024) as ws:
                sender_error: list[BaseException] = []
                sender = threading.Thread(target=self._send_all, args=(ws, pcm, sender_error), daemon=True)
                sender.start()
                text = self._receive_all(ws, deadline)
                sender.join(timeout=max(0.0, deadline - time.monotonic()))
                return text
        except TimeoutError:
            raise ProviderTimeout(f"iFlytek IAT did not answer within {self.timeout:g} s") from None
        except (OSError, WebSocketException, ValueError) as exc:
            # a redirect is refused by the client (it was handed a socket) while handling the
            # handshake's InvalidStatus: report that status
            refused = _invalid_status(exc)
            if refused is None:
                raise ProviderError(f"iFlytek IAT connection failed: {type(exc).__name__}") from None
            status = refused.response.status_code
            if 300 <= status < 400:
                hint = "a redirect, which is not followed; point the connection at the final URL"
            elif status in (401, 403):
                hint = "check the app id, API key and API secret"
            else:
                hint = "see iFlytek's status"
            raise ProviderError(f"iFlytek IAT refused the connection (HTTP {status}); {hint}") from None

    def _socket(self) -> socket.socket | None:
        """The TCP connection, opened to the address the guard checked (the name still goes
        into the Host header and the TLS server name); None without a guard."""
        if self.guard is None:
            return None
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme.lower() == "wss" else 80)
        address = self.guard.address(parts.hostname or "", port)
        sock = socket.create_connection((address, port), timeout=self.timeout)
        sock.settimeout(None)  # as websockets leaves the sockets it opens: its own deadlines apply
        return sock

    def _send_all(self, ws, pcm: bytes, errors: list[BaseException]) -> None:
        try:
            for index, frame in enumerate(self.frames(pcm)):
                if index and self.frame_interval:
                    time.sleep(self.frame_interval)  # iFlytek's pacing; this runs in a pool thread
                ws.send(json.dumps(frame))
        except (OSError, WebSocketException) as exc:  # the receiver reports the closed connection
            errors.append(exc)

    def _receive_all(self, ws, deadline: float) -> str:
        pieces: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                raw = ws.recv(timeout=remaining)
            except TimeoutError:
                raise
            except WebSocketException as exc:
                raise ProviderError(f"iFlytek IAT closed the connection before the last result: {exc}") from None
            try:
                answer = json.loads(raw)
            except ValueError:
                raise ProviderError("iFlytek IAT sent an answer that is not JSON") from None
            code = answer.get("code", 0)
            if code != 0:
                raise ProviderError(f"iFlytek IAT error {code}: {answer.get('message', 'no message')}")
            data = answer.get("data") or {}
            for word in (data.get("result") or {}).get("ws", []):
                pieces.extend(str(cw.get("w", "")) for cw in word.get("cw", []))
            if data.get("status") == 2:
                return "".join(pieces)
