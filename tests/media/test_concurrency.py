"""picTimes under real concurrency: 20 simultaneous uploads over HTTP to a uvicorn server
for a user with 5 picTimes left. Exactly what succeeded is charged, failures give their
picTime back, nothing goes negative, and the balance equals the ledger."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.factories import PASSWORD, make_user
from tests.media.fakes import serve_asgi
from tests.media.helpers import assert_books_balance, snapshot, usage_rows
from tests.media.samples import render_lines

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

URL = "/PictureToTextModel/chat"
UPLOADS = 20
PIC_TIMES = 5


def _upload_all(base: str, username: str, model: str, picture: bytes) -> list[httpx.Response]:
    login = httpx.post(base + "/auth/login", json={"username": username, "password": PASSWORD}, timeout=30)
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    start = threading.Barrier(UPLOADS)

    def upload(index: int) -> httpx.Response:
        start.wait(timeout=30)  # all twenty leave together
        return httpx.post(
            base + URL,
            params={"model": model},
            files={"file": (f"page-{index}.png", picture, "image/png")},
            headers=headers,
            timeout=300,
        )

    with ThreadPoolExecutor(UPLOADS) as pool:
        return list(pool.map(upload, range(UPLOADS)))


@pytest.mark.parametrize("model", ["oa-vision", pytest.param("embedded", marks=pytest.mark.slow)])
def test_twenty_concurrent_uploads_charge_exactly_five(app, maker, settings, connections, model):
    user = make_user(maker, settings, pic_times=PIC_TIMES)
    picture = render_lines(("Meteor 42",), size=40, width=320)
    with serve_asgi(app) as base:
        responses = _upload_all(base, user.username, model, picture)
    outcomes = Counter((r.status_code, r.json()["code"]) for r in responses)
    assert outcomes == {(200, 0): PIC_TIMES, (402, "PIC_TIMES_NOT_ENOUGH"): UPLOADS - PIC_TIMES}, outcomes
    if model == "embedded":
        assert all("Meteor" in r.json()["content"] for r in responses if r.status_code == 200)
    else:
        assert connections["openai"].state.calls == PIC_TIMES  # the refused fifteen never reached an engine
    after = snapshot(maker, user.id)
    assert after.pic_times == 0
    assert [row.status for row in usage_rows(maker, user.id)] == ["ok"] * PIC_TIMES
    assert_books_balance(maker, user.id)


def test_concurrent_failures_release_and_the_books_still_balance(app, maker, settings, connections):
    user = make_user(maker, settings, pic_times=PIC_TIMES)
    connections["openai"].state.fail_every = 2  # every second call to the engine fails
    with serve_asgi(app) as base:
        responses = _upload_all(base, user.username, "oa-vision", render_lines(("x",), size=20, width=60))
    outcomes = Counter((r.status_code, r.json()["code"]) for r in responses)
    ok = outcomes[(200, 0)]
    failed = outcomes[(502, "PICTURE_TO_TEXT_ERROR")]
    refused = outcomes[(402, "PIC_TIMES_NOT_ENOUGH")]
    assert ok + failed + refused == UPLOADS, outcomes
    assert 1 <= ok <= PIC_TIMES and failed >= 1
    assert connections["openai"].state.calls == ok + failed
    after = snapshot(maker, user.id)
    assert after.pic_times == PIC_TIMES - ok >= 0  # only successes were charged
    assert Counter(row.status for row in usage_rows(maker, user.id)) == {"ok": ok, "error": failed}
    assert_books_balance(maker, user.id)
