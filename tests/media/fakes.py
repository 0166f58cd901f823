"""Local protocol servers for the media tests and bench, on 127.0.0.1, started by the caller.

- `IatServer`: iFlytek IAT dictation over websocket (the `websockets` package). It checks
  the signed URL (`backend.providers.iflytek.verify`, method GET, and that the signed host
  is the host connected to), the frame sequence (status 0 with `common.app_id` and
  `business` first, then 1…, then 2), the audio format and the 8000-byte frame limit, and
  keeps the audio it received. It answers the configured words, one result frame each.
- `ocr_app`: iFlytek OCR over HTTP; checks the signature (method POST) and the body, and
  answers `whole_text` = the configured `reader(image)`, by default "<w>x<h> <FORMAT>" of
  the picture it decoded — so a test sees the picture arrived intact.
- `openai_app`: `/v1/audio/transcriptions` and `/v1/chat/completions` (vision), checking
  the Bearer key; answers describe what arrived ("heard N samples at R Hz mono",
  "picture WxH FORMAT"). `app.state.fail_every = n` makes every n-th request answer 500.
- `serve_asgi(app)`: any ASGI app under uvicorn in a thread, yielding its base URL.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from urllib.parse import parse_qsl, urlparse

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from websockets.sync.server import serve

from backend.providers.iflytek import verify
from backend.providers.iflytek_keys import IflytekKeys

IAT_PATH = "/v2/iat"
OCR_PATH = "/v1/private/hh_ocr_recognize_doc"
FAKE_KEYS = IflytekKeys("5f1a2b3c", "a" * 32, "s" * 32)
FAKE_OPENAI_KEY = "sk-fake-media-key-0123456789"
MAX_CLOCK_SKEW = 300


def _fresh(date: str) -> bool:
    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return False
    return abs((datetime.now(UTC) - sent).total_seconds()) <= MAX_CLOCK_SKEW


@contextmanager
def serve_asgi(app, timeout: float = 20.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free port; yields `http://127.0.0.1:port`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"uvicorn did not start within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


# --- iFlytek IAT --------------------------------------------------------------------------


class IatServer:
    """A signature-checking IAT dictation server; use as a context manager."""

    def __init__(
        self, keys: IflytekKeys = FAKE_KEYS, words: tuple[str, ...] = ("你好", "，", "世界"), error: tuple | None = None
    ) -> None:
        self.keys = keys
        self.words = words
        self.error = error  # (code, message) to answer instead of results
        self.sessions: list[dict] = []  # one per accepted connection: frames and audio received
        self.refused = 0
        self.problems: list[str] = []

    def __enter__(self) -> IatServer:
        self.server = serve(self._handle, "127.0.0.1", 0, process_request=self._check_signature)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}{IAT_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.thread.join(10)

    def _check_signature(self, connection, request):
        parsed = urlparse(request.path)
        query = dict(parse_qsl(parsed.query))
        if parsed.path != IAT_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such path\n")
        signed_for_this_host = query.get("host") == request.headers.get("Host")
        if not (
            signed_for_this_host
            and _fresh(query.get("date", ""))
            and verify(query, self.keys.api_key, self.keys.api_secret, "GET", parsed.path)
        ):
            self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, '{"message":"HMAC signature cannot be verified"}\n')
        return None

    def _problem(self, ws, code: int, message: str) -> None:
        self.problems.append(message)
        ws.send(json.dumps({"code": code, "message": message, "sid": "iat-fake"}))

    def _handle(self, ws) -> None:
        session: dict = {"frames": [], "audio": bytearray()}
        self.sessions.append(session)
        expected = 0
        for message in ws:
            frame = json.loads(message)
            session["frames"].append(frame)
            data = frame.get("data") or {}
            status = data.get("status")
            if expected == 0:
                if status != 0 or (frame.get("common") or {}).get("app_id") != self.keys.app_id:
                    return self._problem(ws, 10105, "first frame must be status 0 with common.app_id of this app")
                if (frame.get("business") or {}).get("domain") != "iat":
                    return self._problem(ws, 10106, "business.domain must be iat")
            elif status not in (1, 2):
                return self._problem(ws, 10160, f"frame {len(session['frames'])} has status {status}, expected 1 or 2")
            if data.get("format") != "audio/L16;rate=16000" or data.get("encoding") != "raw":
                return self._problem(ws, 10163, "audio must be audio/L16;rate=16000, encoding raw")
            chunk = base64.b64decode(data.get("audio", ""))
            if len(chunk) > 8000:
                return self._problem(ws, 10163, f"audio frame of {len(chunk)} bytes exceeds 8000")
            session["audio"] += chunk
            expected = 1
            if status == 2:
                break
        else:
            return None  # the client went away
        if self.error:
            ws.send(json.dumps({"code": self.error[0], "message": self.error[1], "sid": "iat-fake"}))
            return None
        for index, word in enumerate(self.words):
            last = index == len(self.words) - 1
            words = [{"bg": index, "cw": [{"sc": 0, "w": word}]}]
            result = {"sn": index + 1, "ls": last, "bg": 0, "ed": 0, "ws": words}
            data = {"status": 2 if last else 1, "result": result}
            ws.send(json.dumps({"code": 0, "message": "success", "sid": "iat-fake", "data": data}))
        return None


# --- iFlytek OCR --------------------------------------------------------------------------


def describe_picture(image: Image.Image) -> str:
    return f"{image.size[0]}x{image.size[1]} {image.format}"


def ocr_app(keys: IflytekKeys = FAKE_KEYS, reader: Callable[[Image.Image], str] = describe_picture) -> FastAPI:
    """A signature-checking iFlytek OCR server (`app.state.calls`, `app.state.refused`)."""
    app = FastAPI()
    app.state.calls = 0
    app.state.refused = 0

    @app.post(OCR_PATH)
    async def recognize(request: Request) -> JSONResponse:
        query = dict(request.query_params)
        if not (
            query.get("host") == request.headers.get("host")
            and _fresh(query.get("date", ""))
            and verify(query, keys.api_key, keys.api_secret, "POST", OCR_PATH)
        ):
            app.state.refused += 1
            return JSONResponse({"message": "HMAC signature cannot be verified"}, status_code=401)
        app.state.calls += 1
        body = await request.json()
        if (body.get("header") or {}).get("app_id") != keys.app_id:
            return JSONResponse({"header": {"code": 10313, "message": "invalid app_id", "sid": "ocr-fake"}})
        res = body.get("parameter", {}).get("hh_ocr_recognize_doc", {}).get("recognizeDocumentRes", {})
        if res != {"encoding": "utf8", "compress": "raw", "format": "json"}:
            return JSONResponse({"header": {"code": 10008, "message": "bad recognizeDocumentRes", "sid": "ocr-fake"}})
        payload = body.get("payload", {}).get("image", {})
        try:
            image = Image.open(io.BytesIO(base64.b64decode(payload["image"])))
            image.load()
        except Exception:
            return JSONResponse({"header": {"code": 10009, "message": "image cannot be decoded", "sid": "ocr-fake"}})
        expected = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}.get(image.format)
        if payload.get("encoding") != expected:
            return JSONResponse({"header": {"code": 10010, "message": "encoding does not match", "sid": "ocr-fake"}})
        document = {"whole_text": reader(image), "pages": []}
        text = base64.b64encode(json.dumps(document, ensure_ascii=False).encode()).decode()
        result = {"compress": "raw", "encoding": "utf8", "format": "json", "text": text}
        header = {"code": 0, "message": "success", "sid": "ocr-fake"}
        return JSONResponse({"header": header, "payload": {"recognizeDocumentRes": result}})

    return app


# --- OpenAI-compatible --------------------------------------------------------------------


def openai_app(api_key: str = FAKE_OPENAI_KEY) -> FastAPI:
    """A fake OpenAI-compatible server (`app.state.calls`, `app.state.models`, `app.state.fail_every`)."""
    app = FastAPI()
    app.state.calls = 0
    app.state.models = []
    app.state.fail_every = 0
    lock = threading.Lock()

    def refuse(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {api_key}":
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, 401)
        with lock:
            app.state.calls += 1
            failing = app.state.fail_every and app.state.calls % app.state.fail_every == 0
        if failing:
            return JSONResponse({"error": {"message": "the model crashed", "type": "server_error"}}, 500)
        return None

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> JSONResponse:
        if (answer := refuse(request)) is not None:
            return answer
        form = await request.form()
        app.state.models.append(form.get("model"))
        data = await form["file"].read()
        try:
            with wave.open(io.BytesIO(data)) as wav:
                rate, channels, width, frames = (
                    wav.getframerate(),
                    wav.getnchannels(),
                    wav.getsampwidth(),
                    wav.getnframes(),
                )
        except (wave.Error, EOFError):
            return JSONResponse({"error": {"message": "file is not a WAV", "type": "invalid_request_error"}}, 400)
        layout = "mono" if channels == 1 else f"{channels} channels"
        return JSONResponse({"text": f"heard {frames} samples at {rate} Hz {layout} {8 * width}-bit"})

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> JSONResponse:
        if (answer := refuse(request)) is not None:
            return answer
        body = await request.json()
        app.state.models.append(body.get("model"))
        parts = body["messages"][-1]["content"]
        prompt = next(p["text"] for p in parts if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        header, _, encoded = url.partition(",")
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        if not header.startswith("data:image/") or not header.endswith(";base64") or "text" not in prompt.lower():
            return JSONResponse({"error": {"message": "expected a data URL and a prompt", "type": "invalid"}}, 400)
        content = f"picture {image.size[0]}x{image.size[1]} {image.format} sent as {header[5:].split(';')[0]}"
        message = {"role": "assistant", "content": content}
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            }
        )

    return app
