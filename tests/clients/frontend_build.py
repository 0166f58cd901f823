"""Build the StrangeLoop frontend from ../shared/clients with npm, once per source version.

Only what a deployer must do is changed, in a temporary copy (nothing is copied into the
project):
- the server address: `VITE_API_URL` in `.env` and the `/api` proxy target in
  `vite.config.ts` (the dev server's; the built app calls `VITE_API_URL` directly);
- what its lock needs to install with npm: the lock is pnpm's (`pnpm-lock.yaml`), which npm
  does not read, so the direct dependencies are pinned to the versions the lock resolved —
  except `@kousum/semi-ui-vue@0.24.0` and `@kousum/semi-icons-vue@0.23.0`, which the npm
  registry no longer serves: 0.22.0 and 0.21.0 stand in (same `Chat` component; the shipped
  ranges `^0.24.0` / `^0.23.0` match nothing the registry has, so a plain `npm install` fails);
- the build itself: `npm run build` is `vue-tsc -b && vite build`, and the shipped source does
  not type-check (about 240 TypeScript errors in src/ and in semi-ui's own sources), so the
  test runs its second half, `vite build`; and the PWA plugin refuses to build a bundle over
  its 2 MiB precache limit (this app's is 2.2 MB), so `vite.config.ts`'s `workbox` gets a
  larger `maximumFileSizeToCacheInBytes` — it only decides which files the service worker
  caches (the test blocks service workers anyway).

The built `dist/` is cached under `$METEOR_TEST_CACHE` (default `~/.cache/meteor-tests`),
keyed by a hash of the frontend's files and of this recipe, so `make test` builds it once.
It is built with a placeholder address; `dist_for(api_url)` writes the real one in — Vite
inlines `import.meta.env.VITE_API_URL` as a string literal, so that is the very bundle a
build with that address produces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "http://meteor-api.placeholder.invalid"
RECIPE = "strangeloop-build-1"  # change when the recipe below changes
STAND_INS = {"@kousum/semi-ui-vue": "0.22.0", "@kousum/semi-icons-vue": "0.21.0"}
PRECACHE_LIMIT = "maximumFileSizeToCacheInBytes: 8 * 1024 * 1024,"
NPM_TIMEOUT = 900
BUILD_TIMEOUT = 900


def clients_dir() -> Path | None:
    """`../shared/clients` as seen from the project (a main checkout or a worktree)."""
    given = os.environ.get("METEOR_CLIENTS_DIR")
    candidates = [Path(given)] if given else []
    candidates += [ROOT.parent / "shared" / "clients", ROOT.parent.parent / "shared" / "clients"]
    return next((c for c in candidates if (c / "strangeloop-frontend" / "package.json").exists()), None)


def source_hash(src: Path) -> str:
    digest = hashlib.sha256(RECIPE.encode())
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "node_modules" not in p.parts):
        if "dist" in path.relative_to(src).parts:
            continue
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def lock_versions(lock_text: str) -> dict[str, str]:
    """The versions pnpm-lock.yaml resolved for the project's direct dependencies."""
    importers = lock_text.split("\nimporters:", 1)[1].split("\npackages:", 1)[0]
    versions: dict[str, str] = {}
    name = None
    for line in importers.splitlines():
        match = re.match(r"^      '?([^':]+)'?:\s*$", line)
        if match:
            name = match.group(1)
            continue
        match = re.match(r"^        version: ([^(\s]+)", line)
        if match and name:
            versions[name] = match.group(1)
    return versions


def apply_deployer_edits(work: Path, api_url: str) -> None:
    env = work / ".env"
    env.write_text(re.sub(r"(?m)^VITE_API_URL=.*$", f"VITE_API_URL={api_url}", env.read_text()))
    config = work / "vite.config.ts"
    text = config.read_text()
    text = text.replace("target: 'http://127.0.0.1:9090'", f"target: '{api_url}'")
    text = text.replace("workbox: {", "workbox: {\n        " + PRECACHE_LIMIT, 1)
    config.write_text(text)
    package = json.loads((work / "package.json").read_text())
    pins = lock_versions((work / "pnpm-lock.yaml").read_text())
    for section in ("dependencies", "devDependencies"):
        for name in package[section]:
            package[section][name] = STAND_INS.get(name) or pins[name]
    (work / "package.json").write_text(json.dumps(package, indent=2))


def _run(cmd: list[str], cwd: Path, timeout: int, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); see {log}:\n{log.read_text()[-4000:]}")


def built_dist(log_dir: Path) -> Path:
    """The built dist/ of the frontend (with the placeholder address), from the cache or built now."""
    clients = clients_dir()
    if clients is None:
        raise FileNotFoundError("../shared/clients/strangeloop-frontend not found (set METEOR_CLIENTS_DIR)")
    src = clients / "strangeloop-frontend"
    cache = Path(os.environ.get("METEOR_TEST_CACHE", Path.home() / ".cache" / "meteor-tests"))
    target = cache / f"strangeloop-{source_hash(src)}"
    if (target / "dist" / "index.html").exists():
        return target / "dist"
    log = log_dir / "strangeloop-build.log"
    with tempfile.TemporaryDirectory(prefix="strangeloop-build-") as tmp:
        work = Path(tmp) / "app"
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("node_modules", "dist"))
        apply_deployer_edits(work, PLACEHOLDER)
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], work, NPM_TIMEOUT, log)
        _run(["npx", "vite", "build"], work, BUILD_TIMEOUT, log)
        staging = cache / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(work / "dist", staging / "dist")
        try:
            staging.rename(target)
        except OSError:  # another run finished first: use its copy
            shutil.rmtree(staging, ignore_errors=True)
    return target / "dist"


def dist_for(dist: Path, api_url: str, into: Path) -> Path:
    """A copy of `dist` whose bundle calls `api_url`."""
    shutil.copytree(dist, into)
    for path in into.rglob("*"):
        if path.is_file() and path.suffix in (".js", ".html", ".json", ".webmanifest"):
            text = path.read_text(encoding="utf-8")
            if PLACEHOLDER in text:
                path.write_text(text.replace(PLACEHOLDER, api_url), encoding="utf-8")
    return into
