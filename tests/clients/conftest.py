"""The original clients against a real Meteor: `python -m backend serve-api` on a free
loopback port over a fresh SQLite data dir, and the clients taken from
../shared/clients/ into a temporary copy whose only edit is the server address (what a
deployer changes). Nothing of the clients is copied into the project."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from backend.config import Settings
from db.models import ModelFile
from db.session import get_sessionmaker
from tests.browser.conftest import free_port, stop
from tests.clients.stack import ADMIN_PASSWORD, api_env, spawn_api  # noqa: F401 - ADMIN_PASSWORD for the tests
from tests.seed003.conftest import Actor, admin, alice, bob  # noqa: F401 - pytest fixtures

ROOT = Path(__file__).resolve().parents[2]
ANSWER_TOKENS = 24  # the embedded model's answer limit: a chat takes seconds


def clients_dir() -> Path:
    """../shared/clients beside the project (a worktree's parent holds it too)."""
    for base in (ROOT.parent, ROOT.parent.parent):  # a clone, or a worktree under <parent>/wt/
        if (base / "shared" / "clients").is_dir():
            return base / "shared" / "clients"
    pytest.fail("../shared/clients is missing: the original clients are test fixtures kept beside the project")


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


@pytest.fixture(scope="module")
def legacy_meteor(tmp_path_factory) -> Iterator[Meteor]:
    """serve-api as a deployment for the desktop client: METEOR_LEGACY_UUID_AUTH=true."""
    meteor, process = start_meteor(tmp_path_factory.mktemp("meteor-legacy"), METEOR_LEGACY_UUID_AUTH="true")
    try:
        yield meteor
    finally:
        stop(process)
