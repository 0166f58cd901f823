"""Audit finding 1: no server file reaches a user through the playground.

The exact attack on a live `serve-api`-like server (uvicorn on 127.0.0.1, Gradio's queue in
its lifespan): a registered user's Bearer token, a `gradio.FileData` whose `path` is a server
file as the input of the voice or the picture recogniser (or a chat attachment), then
`GET /playground/gradio_api/file=<whatever path the answer named>`. Plus: one user cannot
fetch or use another user's upload, and a user's own upload still works end to end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import httpx
import pytest

from backend.playground import files
from tests.factories import make_user
from tests.media.samples import ENGLISH_LINES, SENTENCE, character_accuracy, espeak_wav, render_lines, word_error_rate
from tests.playground.helpers import GradioSession, completed_output

pytestmark = pytest.mark.slow

ABSOLUTE_PATH = re.compile(r"(/[\w.\-]+(?:/[\w.\-]+)+)")


def _tab(base: str, headers: dict[str, str]) -> GradioSession:
    client = httpx.Client(base_url=f"{base}/playground", headers=headers, timeout=httpx.Timeout(120, connect=10))
    tab = GradioSession(client)
    tab.load_config()
    return tab


def _bearer(base: str, username: str) -> dict[str, str]:
    with httpx.Client(base_url=base, timeout=30) as api:
        r = api.post("/auth/login", json={"username": username, "password": "correct-horse-1"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _file_data(path: str, *, meta: bool = True, name: str | None = None) -> dict:
    data = {"path": path, "url": None, "orig_name": name or Path(path).name, "size": None, "mime_type": None}
    if meta:
        data["meta"] = {"_type": "gradio.FileData"}
    return data


def _canaries(app) -> list[tuple[str, bytes]]:
    """Server files worth stealing, each with bytes that must never reach a user."""
    settings = app.state.settings
    canary = secrets.token_hex(16).encode()
    secret_file = Path(settings.data_dir) / "secrets.json"
    secret_file.write_bytes(b'{"jwt_secret": "' + canary + b'"}')
    found = [(str(secret_file), canary), ("/proc/self/environ", b"PATH=")]
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        found.append((url.removeprefix("sqlite:///"), b"SQLite format 3"))
    return found


def _attempt(tab: GradioSession, fn_index: int, value, secret: bytes) -> list[str]:
    """The audit's chain: queue the event with `value` as its input, then fetch through
    `file=` every path the answer named. Returns what leaked (empty when nothing did)."""
    r = tab.join(fn_index, value)
    leaked = []
    text = r.text
    if r.status_code == 200:
        with tab.client.stream("GET", "/gradio_api/queue/data", params={"session_hash": tab.session_hash}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    text += line
                    if json.loads(line[5:]).get("msg") == "process_completed":
                        break
    for path in set(ABSOLUTE_PATH.findall(text)):
        got = tab.client.get(f"/gradio_api/file={path}")
        if got.status_code == 200 and secret in got.content:
            leaked.append(path)
    return leaked


def test_a_user_cannot_read_server_files_through_the_recognisers_or_file_route(pg_server, maker, settings):  # noqa: F811
    base, app = pg_server
    user = make_user(maker, settings, tokens=100, pic_times=5)
    tab = _tab(base, _bearer(base, user.username))
    voice = tab.fn_index("pg-transcribe", "click")
    picture = tab.fn_index("pg-recognise", "click")
    chat = tab.fn_index("pg-input", "submit")
    for path, secret in _canaries(app):
        for meta in (True, False):  # with Gradio's marker, and without it (components read `path` themselves)
            for fn_index, value in (
                (voice, [_file_data(path, meta=meta, name="clip.wav"), "en"]),
                (picture, [_file_data(path, meta=meta, name="pic.png"), "en"]),
                (chat, [{"text": "hi", "files": [_file_data(path, meta=meta, name="a.png")]}, [], None, None, "en"]),
            ):
                r = tab.join(fn_index, value)
                assert r.status_code == 403, (path, fn_index, r.status_code, r.text[:300])
                assert path not in r.text and "gradio" not in r.text.lower()
                assert r.json()["detail"]["error"]  # a generic, translated message
                assert _attempt(tab, fn_index, value, secret) == [], (path, fn_index)
        for route in ("file=", "file/"):
            got = tab.client.get(f"/gradio_api/{route}{path}")
            assert got.status_code == 404 and secret not in got.content and path not in got.text
    assert tab.client.get("/gradio_api/proxy=http://127.0.0.1:1/x").status_code == 404


def test_the_first_attack_leaks_nothing_even_when_it_reaches_gradio(pg_server, maker, settings):  # noqa: F811
    """The audit's exact request (FileData with meta, picture recogniser): whatever answers,
    no path and no secret come back."""
    base, app = pg_server
    user = make_user(maker, settings, pic_times=1)
    tab = _tab(base, _bearer(base, user.username))
    path, secret = _canaries(app)[0]
    picture = tab.fn_index("pg-recognise", "click")
    assert _attempt(tab, picture, [_file_data(path, name="pic.png"), "en"], secret) == []


def _upload(tab: GradioSession, name: str, content: bytes, mime: str) -> str:
    r = tab.client.post("/gradio_api/upload", files=[("files", (name, content, mime))])
    assert r.status_code == 200, r.text
    (path,) = r.json()
    return path


def test_a_user_reads_only_their_own_uploads(pg_server, maker, settings):  # noqa: F811
    base, _app = pg_server
    alice = make_user(maker, settings, pic_times=1)
    bob = make_user(maker, settings, pic_times=1)
    alice_tab, bob_tab = _tab(base, _bearer(base, alice.username)), _tab(base, _bearer(base, bob.username))
    content = render_lines(ENGLISH_LINES[:1]) + secrets.token_bytes(8)  # PNG readers ignore trailing bytes
    path = _upload(alice_tab, "alice.png", content, "image/png")
    assert files.owns(settings, f"user:{alice.id}", path) and not files.owns(settings, f"user:{bob.id}", path)

    mine = alice_tab.client.get(f"/gradio_api/file={path}")
    assert mine.status_code == 200 and mine.content == content
    # bob: not through file=, not as Gradio's shared copy, not as an input
    shared = files.upload_folder() / Path(path).parent.name / Path(path).name
    assert shared.is_file()  # Gradio's own copy is still there…
    for candidate in (path, str(shared)):
        got = bob_tab.client.get(f"/gradio_api/file={candidate}")
        assert got.status_code == 404 and content not in got.content  # …and bob gets neither
        r = bob_tab.join(bob_tab.fn_index("pg-recognise", "click"), [_file_data(candidate), "en"])
        assert r.status_code == 403
    # an anonymous caller neither
    anonymous = httpx.get(f"{base}/playground/gradio_api/file={path}", timeout=30)
    assert anonymous.status_code in (401, 404) and content not in anonymous.content


def test_a_users_own_upload_is_recognised_end_to_end(pg_server, maker, settings):  # noqa: F811
    base, _app = pg_server
    user = make_user(maker, settings, pic_times=1)
    tab = _tab(base, _bearer(base, user.username))

    picture = _upload(tab, "note.png", render_lines(ENGLISH_LINES), "image/png")
    out = completed_output(tab.run(tab.fn_index("pg-recognise", "click"), [_file_data(picture), "en"]))["data"]
    assert character_accuracy("\n".join(ENGLISH_LINES), out[0]) >= 0.9, out
    assert "✓" in out[1]

    clip = _upload(tab, "recording.wav", espeak_wav(), "audio/wav")
    out = completed_output(tab.run(tab.fn_index("pg-transcribe", "click"), [_file_data(clip), "en"]))["data"]
    assert word_error_rate(SENTENCE, out[0]) <= 0.25, out
    assert os.path.isfile(clip)


def test_unexpected_failures_show_a_generic_translated_line_and_no_exception_text(pg_server, maker, settings):  # noqa: F811
    """An upload the engines cannot read: the user gets a message, never a path or a traceback."""
    base, _app = pg_server
    user = make_user(maker, settings, pic_times=1)
    tab = _tab(base, _bearer(base, user.username))
    for elem, name, mime in (("pg-recognise", "broken.png", "image/png"), ("pg-transcribe", "broken.wav", "audio/wav")):
        path = _upload(tab, name, b"not really " + name.encode(), mime)
        messages = tab.run(tab.fn_index(elem, "click"), [_file_data(path), "en"])
        text = json.dumps(messages)
        assert messages[-1]["msg"] == "process_completed"
        assert not ABSOLUTE_PATH.search(text.replace("\\/", "/")), text[:500]
        assert "Traceback" not in text and "Error:" not in text
