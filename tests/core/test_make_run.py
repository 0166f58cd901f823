"""The README's promise: `make run` migrates, bootstraps the admin, serves both servers,
and Ctrl-C stops both. Started here exactly as the Makefile starts it."""

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.core.helpers import ROOT, env_for, free_port, wait_for


def test_make_run_starts_both_servers_and_ctrl_c_stops_both(tmp_path):
    api_port, ui_port = free_port(), free_port()
    env = env_for(
        tmp_path, METEOR_API_PORT=str(api_port), METEOR_UI_PORT=str(ui_port), METEOR_ADMIN_PASSWORD="first-admin-pw"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(f"http://127.0.0.1:{api_port}/healthz", proc).json()["status"] == "ok"
        r = httpx.post(
            f"http://127.0.0.1:{api_port}/admin/login", json={"admin": "admin", "password": "first-admin-pw"}
        )
        assert r.json()["code"] == 0 and r.json()["is_super"] is True
        wait_for(f"http://127.0.0.1:{ui_port}/_stcore/health", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode is not None
    for port in (api_port, ui_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after Ctrl-C"
    assert "first-admin-pw" not in out  # a given password is never echoed


def serve_once(tmp_path: Path, then=None) -> str:
    """Start `python -m backend serve-api`, run `then(base_url)`, stop it; return its output."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve-api", "--port", str(port)],
        cwd=ROOT,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", proc)
        if then:
            then(f"http://127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    return out


def test_generated_admin_password_is_printed_once(tmp_path):
    first = serve_once(tmp_path)
    password = re.search(r"password: (\S+)", first).group(1)

    def login(base: str) -> None:
        r = httpx.post(f"{base}/admin/login", json={"admin": "admin", "password": password})
        assert r.json()["code"] == 0

    second = serve_once(tmp_path, then=login)
    assert "Created super admin" in first and "Created super admin" not in second
