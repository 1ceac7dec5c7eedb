"""Logging, configured once: structlog's pipeline for our events and for uvicorn's.

Every line is one JSON object with "event", "level", "timestamp" and whatever the request's
context holds (request_id, session). A redaction processor is the last line of defence: keys
that name a secret are masked whatever code logged them.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

# Keys that must never carry a value into a log line.
SECRET_KEYS = frozenset(
    {
        "code", "code_verifier", "verifier", "token", "id_token", "access_token",
        "refresh_token", "client_secret", "secret", "cookie", "cookies", "authorization",
        "password", "state",
    }
)  # fmt: skip
REDACTED = "[redacted]"


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in SECRET_KEYS.intersection(event):
        event[key] = REDACTED
    return event


class _Timestamp:
    """ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes
    it, at a tenth of the cost: the date and time are formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


# Which server wrote a line, when one process runs several (`relay demo`). A plain context
# variable, not structlog's: those are cleared at the start of every request.
SERVER: contextvars.ContextVar[str | None] = contextvars.ContextVar("relay_server", default=None)


def _server(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    server = SERVER.get()
    if server is not None:
        event["server"] = server
    return event


def _json(event: Any, **_kw: Any) -> str:
    return orjson.dumps(event, default=repr).decode()


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Our events are rendered by structlog alone (no stdlib LogRecord on the way: the access
    line is on the hot path); other libraries' stdlib records (uvicorn's) go through the same
    processors into the same stream."""
    out = stream or sys.stdout
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        _Timestamp(),
        _server,
        redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to ours, at our level (a uvicorn started earlier in the
    # process leaves its own on them); its access log is replaced by our own line.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    # httpx2 logs full URLs at info; httpcore2 logs request headers (Authorization) at debug;
    # aiosqlite logs every statement with its parameters (nonces, claims, sealed tokens) at
    # debug; psycopg's pool and SQLAlchemy's engine log statements when turned up.
    for name in ("httpx2", "httpcore2", "aiosqlite", "psycopg", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # we log database.migrated ourselves
