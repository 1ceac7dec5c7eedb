"""Pure ASGI middleware: a request id, the request's log context, security headers, and one
access line per request (``http.request``)."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.metrics import Metrics

access_log = structlog.get_logger("relay.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{8,64}$")
# Every relay response: never cached, never framed, never leaks the URL (with its code) in a
# Referer. Pages that need more (a stylesheet, a form target) set their own CSP.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "pragma": "no-cache",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_lines: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_lines = access_lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                headers["x-request-id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self.metrics.requests.labels(route=route, status=str(status)).observe(elapsed)
            if self.access_lines:
                # The path only: query strings carry codes and states.
                access_log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()
