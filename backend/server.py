"""Builds the ASGI app: every API family, /healthz, /docs, the reservation sweeper, and
the Gradio playground at /playground."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend import security
from backend.accounts import login_limits as ratelimit
from backend.accounts import rate_limits
from backend.api import (
    admin,
    auth,
    conversations,
    envelope,
    keys,
    media,
    models,
    openai_compat,
    policy,
    sysuser,
    user,
)
from backend.api import text as text_api
from backend.api.body_limit import BodyLimit
from backend.api.cors import ApiCors
from backend.api.get_body import GetBodyAsQuery
from backend.billing import allowances, quota
from backend.catalog import routing
from backend.config import Settings, get_settings
from backend.reporting import rollup as usage_rollup
from db.session import get_sessionmaker

log = logging.getLogger("meteor.server")


def _sweeper(app: FastAPI, stop: threading.Event) -> None:
    """Release reservations left behind by crashed requests, and roll completed days of usage
    up for the dashboard, every few seconds."""
    settings: Settings = app.state.settings
    while not stop.wait(settings.sweeper_interval_seconds):
        try:
            with app.state.sessionmaker.begin() as session:
                released = quota.sweep_expired(session)
            if released:
                log.info("sweeper released %d expired reservations", released)
            with app.state.sessionmaker.begin() as session:
                ratelimit.sweep(session, settings)  # login counters whose window is over
            with app.state.sessionmaker.begin() as session:
                usage_rollup.catch_up(session)  # completed days into the dashboard's usage roll-up
            allowances.apply_due(app.state.sessionmaker)  # quota policy: scheduled academy allowances
            with app.state.sessionmaker.begin() as session:
                rate_limits.sweep(session)  # quota policy: rate-limit events that left the window
            with app.state.sessionmaker.begin() as session:
                routing.sweep(session)  # quota policy: connection attempts older than the Models page's hour
        except Exception:  # keep sweeping; a transient DB error must not kill the thread
            log.exception("sweeper failed")


def create_app(settings: Settings | None = None, *, playground: bool = True) -> FastAPI:
    """The API server. Tests pass their own Settings (database URL, fast bcrypt)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        thread = threading.Thread(target=_sweeper, args=(app, stop), name="quota-sweeper", daemon=True)
        thread.start()
        yield
        stop.set()

    app = FastAPI(
        title="Meteor API",
        version="1.0",
        lifespan=lifespan,
        description="Seed-000 and seed-003 compatible APIs, an OpenAI-compatible /v1, and the playground.",
    )
    app.state.settings = settings
    security.dummy_hash(settings.bcrypt_rounds)  # made now, so no unknown-name login pays for it
    app.state.sessionmaker = get_sessionmaker(settings.resolved_database_url)
    envelope.install(app)
    app.add_middleware(GetBodyAsQuery)
    app.add_middleware(BodyLimit, settings=settings)  # counts the body before anyone reads it (only CORS is outside)
    # the chat paths first: a request is matched against the routes in this order
    for module in (text_api, openai_compat, auth, admin, user, keys, media, conversations, models, sysuser, policy):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    def healthz(request: Request) -> JSONResponse:
        try:
            with request.app.state.sessionmaker() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    if playground:
        _mount_playground(app, settings)
    app.add_middleware(ApiCors, origins=settings.cors_origin_list)  # outermost: preflights never reach a route
    return app


def _mount_playground(app: FastAPI, settings: Settings) -> None:
    try:
        from backend.playground.app import mount
    except ImportError:
        return  # the playground arrives with the dashboard issue
    mount(app, settings)
