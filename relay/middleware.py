"""Pure ASGI middleware: a request id, the request's log context, security headers, one access
line per request (``http.request``), and the last resort for a crash.

It runs on every forward-auth check, so each step is the cheap form of itself: one pass over
the request headers, a request id from a per-process prefix and a counter, header names
compared as bytes, and the histogram child for each (route, status) looked up once.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from collections.abc import Callable, Iterable

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.config import LoggingConfig
from relay.crypto import short_hash
from relay.endpoints import SESSION, TOKEN, Lifecycle
from relay.metrics import Metrics
from relay.pages import error_response

access_log = structlog.get_logger("relay.access")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._\-]{8,64}$")
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
_SECURITY = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
# Scope key: the response's headers already hold the security headers (the forward-auth
# shortcut adds them once per memoised answer, not per request): only the request id is added.
SECURED = "relay.secured"


def secured(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` with every security header they do not set themselves."""
    headers = tuple(headers)
    present = {name.lower() for name, _ in headers}
    return headers + tuple(h for h in _SECURITY if h[0] not in present)


_SUCCESSFUL_CHECKS = frozenset({"auth", "auth_redirect"})


class RequestIds:
    """Unique ids without a uuid4 per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"


class RequestContext:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, logging: LoggingConfig, lifecycle: Lifecycle
    ) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.access_lines = logging.access_log
        self.auth_sample = logging.auth_success_sample
        self._ids = RequestIds()
        # Bound once (the app is built after logging is configured): a module-level proxy
        # would build a new logger for every line.
        self._access = access_log.bind()
        self._observers: dict[tuple[str, int], Callable[[float], None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _REQUEST_ID.match(value):
                    request_id = value.decode("latin-1")
                break
        if request_id is None:
            request_id = self._ids()
        # No clear_contextvars() first (it walks every context variable, on every check):
        # uvicorn runs each request in a task of its own, whose context is copied from the
        # connection's, never from an earlier request's. test_no_context_leaks_between_requests
        # holds that to account.
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        rid = request_id.encode("latin-1")

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                if SECURED in scope:
                    headers = [*message["headers"], (b"x-request-id", rid)]
                else:
                    headers = list(secured(message.get("headers", ())))
                    headers.append((b"x-request-id", rid))
                if self.lifecycle.shutting_down:
                    # Draining: the proxy should not reuse this connection, so that none is
                    # idle, and caught in mid-request, when the listener closes.
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # Rendered here, inside the request's context, so that even a crash answers with
            # its request id and leaves one traceback and one access line in the log.
            if response_started:
                raise
            response = await error_response(Request(scope), exc)
            await response(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("endpoint"), "__name__", "unmatched")
            self._observe(route, status, elapsed)
            if self.access_lines:
                self._access_line(scope, route, status, elapsed)

    def _access_line(self, scope: Scope, route: str, status: int, elapsed: float) -> None:
        fields: dict[str, object] = {}
        if status == 200 and route in _SUCCESSFUL_CHECKS and self.auth_sample < 1.0:
            if self.auth_sample == 0.0 or random.random() >= self.auth_sample:
                return
            fields["sample_rate"] = self.auth_sample  # this line stands for 1/sample_rate
        if SESSION in scope:  # the shortcut's answer: named here, only if a line is written
            fields["session"] = short_hash(scope[SESSION])
        elif TOKEN in scope:
            fields["bearer"] = short_hash(scope[TOKEN])
        # The path only: query strings carry codes and states.
        self._access.info(
            "http.request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            **fields,
        )

    def _observe(self, route: str, status: int, elapsed: float) -> None:
        observe = self._observers.get((route, status))
        if observe is None:
            child = self.metrics.requests.labels(route=route, status=str(status))
            observe = self._observers[(route, status)] = child.observe
        observe(elapsed)
