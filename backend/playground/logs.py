"""Keep playground sign-in links out of the access log.

A sign-in link arrives as `GET /playground/?token=<link>`; uvicorn writes the request line,
query included, to its access log (`uvicorn.access`). The link is already used up by then
(links sign in once, see `services.playground.redeem_link`), and this filter replaces its
value with `[redacted]` in every record of that logger, so the log holds nothing to replay.
Installed once, by `backend.playground.app.mount`, on the logger itself: it survives
uvicorn's own logging set-up (`dictConfig` keeps a logger's filters) and applies to every
handler.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
_TOKEN = re.compile(r"([?&](?:token|access_token|__sign)=)[^&#\s\"]+", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _TOKEN.sub(lambda m: m.group(1) + REDACTED, text)


class RedactLinkTokens(logging.Filter):
    """Rewrites the request line of access-log records (their `args`, and `msg` itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to uvicorn's access logger (once per process)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactLinkTokens) for f in logger.filters):
        logger.addFilter(RedactLinkTokens())
