"""A small helper for Python (ASGI) apps: "who is this user?" answered in one place.

Behind a proxy doing forward-auth, read the identity the proxy set::

    identity = identity_from_headers(request.headers)   # None when not signed in

Without such a proxy, wrap the app: every request's cookies are checked against the relay's
/auth, the identity lands in ``scope["state"]["relay_identity"]``, and a browser without a
session is sent to the relay's login (API requests get 401)::

    app = RelayGuard(app, relay_url="https://auth.example.com")

Only trust X-Auth-Request-* headers when the proxy in front of the app sets them on every
request (the snippets in deploy/ do); anyone who can reach the app directly can forge them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx2
from starlette.datastructures import URL, Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class Identity:
    subject: str
    user: str
    email: str
    groups: tuple[str, ...]


def identity_from_headers(headers: Mapping[str, str]) -> Identity | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    subject = lowered.get("x-auth-request-subject", "")
    if not subject:
        return None
    groups = lowered.get("x-auth-request-groups", "")
    return Identity(
        subject=subject,
        user=lowered.get("x-auth-request-user", "") or subject,
        email=lowered.get("x-auth-request-email", ""),
        groups=tuple(g for g in groups.split(",") if g),
    )


class RelayGuard:
    """Pure ASGI middleware that lets only signed-in users through."""

    def __init__(
        self,
        app: ASGIApp,
        relay_url: str,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.relay_url = relay_url.rstrip("/")
        self._client = httpx2.AsyncClient(transport=transport, timeout=timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            identity = await self._check(headers.get("cookie"))
        except httpx2.HTTPError:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1011})
                return
            response = JSONResponse({"error": "relay_unavailable"}, status_code=502)
            await response(scope, receive, send)
            return
        if identity is not None:
            scope.setdefault("state", {})["relay_identity"] = identity
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if _is_navigation(scope, headers):
            login = self.relay_url + "/login?" + urlencode({"rd": str(URL(scope=scope))})
            await RedirectResponse(login, status_code=302)(scope, receive, send)
            return
        await JSONResponse({"error": "not_signed_in"}, status_code=401)(scope, receive, send)

    async def _check(self, cookie: str | None) -> Identity | None:
        if not cookie:
            return None
        response = await self._client.get(self.relay_url + "/auth", headers={"cookie": cookie})
        if response.status_code != 200:
            return None
        return identity_from_headers(response.headers)


def _is_navigation(scope: Scope, headers: Headers) -> bool:
    if scope.get("method") not in ("GET", "HEAD") or "x-requested-with" in headers:
        return False
    return headers.get("sec-fetch-mode", "navigate") == "navigate"
