"""relay.guard: the helper for Python apps, against a running relay (in process)."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.guard import Identity, RelayGuard, identity_from_headers
from tests.conftest import PUBLIC_URL, sign_in
from tests.provider import TestProvider


async def whoami(request: Request) -> JSONResponse:
    who: Identity = request.state.relay_identity
    return JSONResponse({"email": who.email, "groups": list(who.groups)})


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def guarded(relay: TestClient) -> TestClient:
    """An app behind RelayGuard that reaches the relay through the relay's own test client."""

    def to_relay(request: httpx2.Request) -> httpx2.Response:
        response = relay.get(request.url.path, headers={"cookie": request.headers["cookie"]})
        return httpx2.Response(response.status_code, headers=response.headers)

    app = Starlette(routes=[Route("/", whoami), WebSocketRoute("/ws", ws)])
    guard = RelayGuard(app, relay_url=PUBLIC_URL, transport=_SyncBridge(to_relay))
    return TestClient(guard, base_url="http://app.test", follow_redirects=False)


class _SyncBridge(httpx2.AsyncBaseTransport):
    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.handler(request)


def test_identity_from_headers() -> None:
    """The four X-Auth-Request-* headers become an Identity; no subject means no identity."""
    identity = identity_from_headers(
        {
            "X-Auth-Request-Subject": "u1",
            "X-Auth-Request-User": "alice",
            "X-Auth-Request-Email": "a@example.com",
            "X-Auth-Request-Groups": "admins,staff",
        }
    )
    assert identity == Identity("u1", "alice", "a@example.com", ("admins", "staff"))
    assert identity_from_headers({"X-Auth-Request-Subject": ""}) is None
    assert identity_from_headers({}) is None


def test_guard_lets_signed_in_users_through(relay: TestClient, provider: TestProvider) -> None:
    """With the relay's session cookie, the app sees the identity."""
    sign_in(relay, provider)
    cookie = relay.cookies["__Host-relay_session"]
    app = guarded(relay)
    response = app.get("/", headers={"cookie": f"__Host-relay_session={cookie}"})
    assert response.json() == {"email": "alice@example.com", "groups": ["admins", "staff"]}


def test_guard_sends_browsers_to_login_and_apis_away(relay: TestClient) -> None:
    """No session: a navigation is redirected to the relay's login with rd; an API call is 401."""
    app = guarded(relay)
    navigation = app.get("/?x=1", headers={"cookie": "__Host-relay_session=" + "A" * 43})
    assert navigation.status_code == 302
    assert navigation.headers["location"] == (
        PUBLIC_URL + "/login?rd=http%3A%2F%2Fapp.test%2F%3Fx%3D1"
    )
    api = app.get("/", headers={"X-Requested-With": "XMLHttpRequest"})
    assert api.status_code == 401
    assert app.post("/").status_code == 401


def test_guard_closes_websockets_without_a_session(relay: TestClient) -> None:
    """A WebSocket without a session is closed with 1008 (policy violation)."""
    app = guarded(relay)
    with pytest.raises(WebSocketDisconnect) as closed, app.websocket_connect("/ws"):
        pass
    assert closed.value.code == 1008


def test_guard_answers_502_when_the_relay_is_down() -> None:
    """A relay that cannot be reached is a 502, not a crash and not a pass."""

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    app = Starlette(routes=[Route("/", whoami)])
    guard = RelayGuard(app, relay_url=PUBLIC_URL, transport=_SyncBridge(refuse))
    with TestClient(guard) as client:
        response = client.get("/", headers={"cookie": "__Host-relay_session=x"})
    assert response.status_code == 502
