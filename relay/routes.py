"""The route table, relative to [server].public_url's path."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from relay.endpoints import backchannel, login, probes, session


def routes(prefix: str) -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/", session.home, methods=["GET"]),
        Route("/login", login.login, methods=["GET"]),
        Route("/callback", login.callback, methods=["GET"]),
        Route("/auth", session.auth, methods=["GET", "HEAD"]),
        Route("/auth/redirect", session.auth_redirect, methods=["GET", "HEAD"]),
        WebSocketRoute("/auth", session.auth_handshake),
        WebSocketRoute("/auth/redirect", session.auth_handshake),
        Route("/userinfo", session.userinfo, methods=["GET"]),
        Route("/logout", session.logout_page, methods=["GET"]),
        Route("/logout", session.logout, methods=["POST"]),
        Route("/backchannel-logout", backchannel.backchannel_logout, methods=["POST"]),
        Route("/healthz", probes.healthz, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/metrics", probes.metrics, methods=["GET"]),
    ]
    return [Mount(prefix, routes=table)] if prefix else table
