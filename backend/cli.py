"""`python -m backend ...`: run, serve-api, migrate, create-admin, seed-demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from backend.config import Settings, get_settings
from db import migrate as db_migrate
from db.session import get_sessionmaker

ROOT = Path(__file__).resolve().parent.parent


def prepare() -> None:
    """Migrate to the newest schema and bootstrap a fresh database (first super admin,
    default model). A generated admin password is printed once and stored only hashed."""
    from backend.bootstrap import bootstrap

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with db_migrate.startup_lock(settings.resolved_database_url):
        db_migrate.upgrade(settings.resolved_database_url)
        with get_sessionmaker(settings.resolved_database_url).begin() as session:
            password = bootstrap(session, settings)
    if password:
        banner = "=" * 64
        print(
            f"{banner}\nCreated super admin 'admin' with password: {password}\n"
            f"It is shown only this once; change it from the dashboard.\n{banner}",
            flush=True,
        )


def api_workers(configured: int | None) -> int:
    """METEOR_WORKERS, else one API process per CPU core."""
    return configured or os.cpu_count() or 1


def uvicorn_options(settings: Settings) -> dict:
    """How uvicorn treats forwarded headers: only from METEOR_TRUSTED_PROXIES (uvicorn's own
    default believes X-Forwarded-For from 127.0.0.1, which would let anyone on this machine,
    or any local proxy's clients, choose the address the login limits count)."""
    trusted = [str(n) for n in settings.trusted_proxy_networks]
    if not trusted:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}


def serve_api(port: int | None, host: str | None, skip_prepare: bool) -> None:
    """The API on `METEOR_WORKERS` processes sharing one socket; they share nothing else, since
    every shared state (quota, reservations, sessions, rate limits) lives in the database."""
    import uvicorn

    settings = get_settings()
    if not skip_prepare:
        prepare()
    uvicorn.run(
        "backend.server:create_app",
        factory=True,
        workers=api_workers(settings.workers),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="info",
        # libuv's event loop and the C HTTP parser: a streamed chat costs about 40% less CPU than
        # on asyncio's loop with h11 (bench.gateway)
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )


def run_all() -> None:
    """Both servers at once; Ctrl-C (or SIGTERM) stops both."""
    settings = get_settings()
    prepare()
    env = dict(os.environ)
    api = subprocess.Popen([sys.executable, "-m", "backend", "serve-api", "--skip-prepare"], cwd=ROOT, env=env)
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "Home.py"),
            "--server.port",
            str(settings.ui_port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
    )
    print(
        f"Meteor API  http://{settings.api_host}:{settings.api_port}  (docs at /docs, playground at /playground)\n"
        f"Dashboard   http://localhost:{settings.ui_port}",
        flush=True,
    )

    def stop(*_args: object) -> None:
        for proc in (ui, api):
            if proc.poll() is None:
                proc.terminate()

    # Handled explicitly: a shell that starts us in the background ignores SIGINT otherwise.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while api.poll() is None and ui.poll() is None:
            try:
                api.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for proc in (ui, api):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def create_admin(name: str, password: str, is_super: bool) -> None:
    from backend.accounts import service as accounts

    settings = get_settings()
    db_migrate.upgrade(settings.resolved_database_url)
    with get_sessionmaker(settings.resolved_database_url).begin() as session:
        accounts.create_admin(session, settings, name=name, password=password, is_super=is_super, actor="cli")
    print(f"admin {name!r} created")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m backend", description="Meteor command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="migrate, bootstrap, start the API server and the dashboard")
    p = sub.add_parser("serve-api", help="migrate, bootstrap, serve the API alone")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--skip-prepare", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="apply migrations and bootstrap")
    p = sub.add_parser("create-admin", help="add an admin")
    p.add_argument("name")
    p.add_argument("--password", required=True)
    p.add_argument("--super", action="store_true")
    p = sub.add_parser("seed-demo", help="fill the database with demo users, vouchers and usage")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--usage", type=int, default=5000)
    args = parser.parse_args(argv)

    if args.command == "run":
        run_all()
    elif args.command == "serve-api":
        serve_api(args.port, args.host, args.skip_prepare)
    elif args.command == "migrate":
        prepare()
    elif args.command == "create-admin":
        create_admin(args.name, args.password, args.super)
    elif args.command == "seed-demo":
        from backend.reporting.demo import seed_demo

        prepare()
        settings = get_settings()
        with get_sessionmaker(settings.resolved_database_url).begin() as session:
            print(seed_demo(session, settings, users=args.users, usage=args.usage))
