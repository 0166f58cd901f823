"""Starting the project as its README says (`make run`, `serve-api`) in a subprocess: the
environment of a fresh data dir, a free port, and a bounded wait for a health check."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.servers import ROOT, free_port

__all__ = ["ROOT", "env_for", "free_port", "wait_for"]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 90) -> httpx.Response:
    """Poll until `url` answers 200 (bounded), failing fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {timeout}s")


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METEOR_")}
    env.update(METEOR_DATA_DIR=str(tmp_path / "data"), METEOR_BCRYPT_ROUNDS="4", **extra)
    return env
