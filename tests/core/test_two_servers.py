"""Two API server processes on one database share a burst of chat requests for one user:
the balance is never overspent and always equals its ledger."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from backend.billing import quota
from tests.core.helpers import ROOT, env_for, free_port, wait_for
from tests.factories import PASSWORD, make_user
from tests.fakes.openai_server import OpenAIServer
from tests.gateway.helpers import add_online_model

pytestmark = pytest.mark.committed  # several connections at once, or a cached sessionmaker

BALANCE = 400
REQUESTS = 60


def test_two_api_processes_never_overspend(db_url, settings, maker, tmp_path):
    user = make_user(maker, settings, tokens=BALANCE)
    with OpenAIServer("one two three four five six", chunks=6, chunk_delay=0.02) as upstream:
        add_online_model(maker, settings, url=upstream.url, name="fake", examples=[])
        env = env_for(
            tmp_path,
            METEOR_DATABASE_URL=db_url,
            METEOR_JWT_SECRET=settings.jwt_secret.get_secret_value(),
            METEOR_SECRET_KEY=settings.secret_key.get_secret_value(),
            METEOR_COOKIE_KEY=settings.cookie_key.get_secret_value(),
        )
        ports = [free_port(), free_port()]
        servers = [
            subprocess.Popen(
                [sys.executable, "-m", "backend", "serve-api", "--port", str(p)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for p in ports
        ]
        try:
            for port, proc in zip(ports, servers, strict=True):
                wait_for(f"http://127.0.0.1:{port}/healthz", proc)
            login = httpx.post(
                f"http://127.0.0.1:{ports[0]}/auth/login", json={"username": user.username, "password": PASSWORD}
            ).json()
            headers = {"Authorization": f"Bearer {login['access_token']}"}

            def chat(i: int) -> dict:
                url = f"http://127.0.0.1:{ports[i % 2]}/textModel/chat"
                body = {"dialog": [{"role": "user", "content": "count please"}], "model": "fake", "max_tokens": 20}
                return httpx.post(url, json=body, headers=headers, timeout=60).json()

            with ThreadPoolExecutor(max_workers=30) as pool:
                answers = list(pool.map(chat, range(REQUESTS)))
        finally:
            for proc in servers:
                proc.terminate()
            for proc in servers:
                proc.wait(timeout=30)
    codes = [a["code"] for a in answers]
    assert set(codes) <= {0, "TOKEN_NOT_ENOUGH"}, codes
    assert codes.count(0) > 0 and codes.count("TOKEN_NOT_ENOUGH") > 0
    spent = sum(a["consume_token"] for a in answers if a["code"] == 0)
    with maker() as s:
        bal = quota.balance(s, user.id)
        assert bal.tokens >= 0
        assert bal.tokens == BALANCE - spent
        assert quota.ledger_sum(s, user.id) == bal
