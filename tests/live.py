"""The app on a real uvicorn server on 127.0.0.1 (a random free port), for the tests that need
one: the openai SDK, disconnects, chunked bodies, the playground's queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from sqlalchemy.engine import Connection

from backend.cli import uvicorn_options
from backend.config import Settings


@contextmanager
def live_server(app, settings: Settings | None = None) -> Iterator[str]:
    """Serve `app` until the block ends; with `settings`, uvicorn is configured the way
    `python -m backend serve-api` configures it (forwarded headers)."""
    # The server's request, offload and background-title threads would all share the test's
    # one rolled-back connection; a DB-API connection is not safe across threads (MariaDB's
    # driver answered "Packet sequence number wrong"), so such tests must make real commits.
    bind = getattr(app.state, "sessionmaker", None) and app.state.sessionmaker.kw.get("bind")
    if isinstance(bind, Connection):
        raise RuntimeError("a test with a live server must be marked @pytest.mark.committed")
    options = uvicorn_options(settings) if settings is not None else {}
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
