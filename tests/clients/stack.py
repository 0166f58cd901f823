"""The original clients against a real Meteor: `python -m backend serve-api` on a free
loopback port over a fresh SQLite data dir, and the clients taken from
../shared/clients/ into a temporary copy whose only edit is the server address (what a
deployer changes). Nothing of the clients is copied into the project. For driving an
original web client through its real pages: the built frontend on a static server of
another origin, and a fake OpenAI upstream."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from backend.config import Settings
from db.models import ModelFile
from db.session import get_sessionmaker
from tests.clients import frontend_build
from tests.servers import ROOT, free_port, stop, wait_healthy

ADMIN_PASSWORD = "clients-admin-pass-1"


class SpaHandler(SimpleHTTPRequestHandler):
    """Static files; any other path is the app's index.html (vue-router's history mode)."""

    def send_head(self):  # noqa: ANN201 - the base class's signature
        path = Path(self.translate_path(self.path.split("?", 1)[0]))
        if not path.exists():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """`directory` served on 127.0.0.1 (another origin than the API: another port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SpaHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Api:
    url: str
    settings: Settings
    log: Path

    @property
    def maker(self):
        return get_sessionmaker(self.settings.resolved_database_url)


def api_env(data: Path, port: int, **overrides: str) -> dict[str, str]:
    """The environment of a test serve-api: no METEOR_* of the caller's, a fresh data dir,
    cheap bcrypt, no model-written titles, plus `overrides` (full variable names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METEOR_")}
    env.update(
        METEOR_DATA_DIR=str(data),
        METEOR_ADMIN_PASSWORD=ADMIN_PASSWORD,
        METEOR_API_PORT=str(port),
        METEOR_BCRYPT_ROUNDS="4",
        METEOR_MODEL_TITLES="false",
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        **overrides,
    )
    return env


def spawn_api(port: int, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`python -m backend serve-api` on `port`, healthy when this returns (stopped if not)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve-api", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, log)
    except BaseException:
        stop(process)
        raise
    return process


@contextmanager
def serve_api(data: Path, logs: Path, **settings: str) -> Iterator[Api]:
    """`python -m backend serve-api` on a free port over a fresh data dir (it migrates and
    bootstraps itself), with the given METEOR_* settings."""
    port = free_port()
    env = api_env(data, port, **{f"METEOR_{k.upper()}": v for k, v in settings.items()})
    process = spawn_api(port, env, logs / "api.log")
    try:
        yield Api(f"http://127.0.0.1:{port}", Settings(data_dir=data, bcrypt_rounds=4), logs / "api.log")
    finally:
        stop(process)


# --- the original clients against a real Meteor

ANSWER_TOKENS = 24  # the embedded model's answer limit: a chat takes seconds


def clients_dir() -> Path:
    """../shared/clients beside the project, or METEOR_CLIENTS_DIR (`frontend_build.clients_dir`)."""
    found = frontend_build.clients_dir()
    if found is None:
        pytest.fail("../shared/clients is missing (or set METEOR_CLIENTS_DIR): the original clients are test fixtures")
    return found


def copy_client(name: str, dest: Path, old_address: str, new_address: str, files: list[str]) -> Path:
    """A copy of the client `name` with `old_address` replaced by `new_address` in `files`
    (globs) and nowhere else; fails if the address is not where it is expected."""
    target = dest / name
    shutil.copytree(clients_dir() / name, target, ignore=shutil.ignore_patterns("node_modules", "dist", ".git"))
    edited = 0
    for pattern in files:
        for path in target.glob(pattern):
            text = path.read_text(encoding="utf-8")
            if old_address in text:
                path.write_text(text.replace(old_address, new_address), encoding="utf-8")
                edited += 1
    assert edited, f"{old_address} not found in {name}/{files}"
    return target


@dataclass
class Meteor:
    url: str
    settings: Settings
    maker: sessionmaker
    log: Path


def start_meteor(tmp: Path, **env_overrides: str) -> tuple[Meteor, subprocess.Popen]:
    """Migrate a fresh data dir, shorten the embedded model's answers, then serve it."""
    data = tmp / "data"
    port = free_port()
    env = api_env(data, port, **env_overrides)
    log = tmp / "api.log"
    prepared = subprocess.run(
        [sys.executable, "-m", "backend", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    settings = Settings(data_dir=data, bcrypt_rounds=4)  # the secrets the server uses (data/secrets.json)
    maker = get_sessionmaker(settings.resolved_database_url)
    with maker.begin() as s:
        s.execute(update(ModelFile).values(num_predict=ANSWER_TOKENS, temperature=0.3))
    process = spawn_api(port, env, log, "--skip-prepare")
    return Meteor(f"http://127.0.0.1:{port}", settings, maker, log), process
