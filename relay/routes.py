"""The route table, relative to [server].public_url's path, and the app that serves it."""

from __future__ import annotations

from typing import Any, cast

from starlette.applications import Starlette
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.endpoints import (
    INTERNAL,
    admin,
    backchannel,
    console,
    login,
    own_sessions,
    probes,
    session,
)
from relay.pages import json_error


def routes(prefix: str) -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/", session.home, methods=["GET"]),
        # Any method: nginx's error_page hands /login every request that lacked a session.
        Route("/login", login.login, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/callback", login.callback, methods=["GET"]),
        Route("/auth", session.auth, methods=["GET", "HEAD"]),
        Route("/auth/redirect", session.auth_redirect, methods=["GET", "HEAD"]),
        WebSocketRoute("/auth", session.auth_handshake),
        WebSocketRoute("/auth/redirect", session.auth_handshake),
        Route("/userinfo", session.userinfo, methods=["GET"]),
        Route("/logout", session.logout_page, methods=["GET"]),
        Route("/logout", session.logout, methods=["POST"]),
        # Any method, as /login: nginx's error_page hands it the refused request.
        Route(
            "/forbidden",
            session.forbidden,
            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        ),
        Route("/sessions", own_sessions.sessions_page, methods=["GET"]),
        Route("/sessions/end", own_sessions.end_one, methods=["POST"]),
        Route("/sessions/end-others", own_sessions.end_others, methods=["POST"]),
        Route("/console", console.console, methods=["GET"]),
        Route("/console/end", console.confirm, methods=["GET"]),
        Route("/console/end", console.end, methods=["POST"]),
        Route("/backchannel-logout", backchannel.backchannel_logout, methods=["POST"]),
        # The relay's public key for private_key_jwt: the client's jwks_uri at the provider.
        Route("/jwks.json", backchannel.jwks, methods=["GET"]),
        # oauth2-proxy's names (docs/migrating-from-oauth2-proxy.md)
        Route("/start", login.login, methods=["GET"]),
        Route("/sign_in", login.login, methods=["GET"]),
        Route("/sign_out", session.sign_out_page, methods=["GET"]),
        Route("/sign_out", session.sign_out, methods=["POST"]),
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/metrics", probes.metrics, methods=["GET"]),
        Route("/admin/stats", admin.stats, methods=["GET"]),
        Route("/admin/sessions", admin.sessions, methods=["GET"]),
        Route("/admin/sessions/revoke", admin.revoke, methods=["POST"]),
        Route("/admin/prune", admin.prune, methods=["POST"]),
    ]
    return [Mount(prefix, routes=table)] if prefix else table


PROBES = ("/healthz", "/readyz", "/metrics")


class InternalPort:
    """Pure ASGI, with [server] internal_port set: that port serves the probes and /metrics
    (at the same paths as before) and the admin API, and nothing else; the public port no
    longer serves /metrics nor /admin (operators' calls stay off the port the proxy exposes)."""

    def __init__(self, app: ASGIApp, port: int, prefix: str) -> None:
        self.app = app
        self._port = port
        self._probes = {prefix + path for path in PROBES}
        self._metrics = prefix + "/metrics"
        self._admin = prefix + "/admin/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            internal = server is not None and server[1] == self._port
            path = scope["path"]
            admin = path.startswith(self._admin)
            if (internal and path not in self._probes and not admin) or (
                not internal and (path == self._metrics or admin)
            ):
                await json_error(404, "not_found", "Not found.")(scope, receive, send)
                return
            scope[INTERNAL] = internal
        await self.app(scope, receive, send)


class RelayApp(Starlette):
    """Starlette, except that a forward-auth check (the hot path, endpoints/shortcut.py)
    enters the middleware stack past Starlette's outermost ServerErrorMiddleware, whose
    wrapping of every message buys nothing there: RequestContext, the next layer, already
    answers any crash with the relay's error page and an access line."""

    def __init__(self, prefix: str, **options: Any) -> None:
        super().__init__(**options)
        self._checks = frozenset({prefix + "/auth", prefix + "/auth/redirect"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._checks:
            scope["app"] = self
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            errors = cast(ServerErrorMiddleware, self.middleware_stack)
            await errors.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
