"""nginx (auth_request) and Caddy (forward_auth) in front of an app, configured from deploy/,
with the real npm oidc-provider behind the login."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from tests.e2e.conftest import Stack, scripted_login
from tests.e2e.stack import caddy_root_certificate

pytestmark = pytest.mark.e2e

FORGED = {
    "X-Auth-Request-Email": "mallory@evil.example",
    "X-Auth-Request-User": "mallory",
    "X-Auth-Request-Subject": "mallory",
    "X-Auth-Request-Groups": "admins",
    "X-Auth-Request-Preferred-Username": "mallory",
    "X-Auth-Request-Access-Token": "forged-token",
}
ALICE = {
    "x-auth-request-email": "alice@example.com",
    "x-auth-request-user": "alice",
    "x-auth-request-subject": "alice",
    "x-auth-request-groups": "admins,staff",
    "x-auth-request-preferred-username": "alice",
}


def session_cookie(client: httpx2.Client) -> str:
    return client.cookies["__Host-relay_session"]


# -- nginx auth_request ---------------------------------------------------------------------


def test_nginx_sends_anonymous_browser_to_login(stack: Stack, http: httpx2.Client) -> None:
    """No session: nginx hands the request to the relay's /login, which redirects to the
    provider and remembers the full original URL, query string included."""
    response = http.get(
        stack.app_url + "/headers?a=1&b=2", headers={"Accept": "text/html"}, follow_redirects=False
    )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(stack.issuer + "/auth?")
    # The provider offers Pushed Authorization Requests (RFC 9126), so the relay pushed the
    # request (redirect_uri, state, nonce, the S256 challenge) to it directly: the browser's
    # URL carries only what stands for it.
    params = parse_qs(urlsplit(location).query)
    assert set(params) == {"client_id", "request_uri"}
    assert params["request_uri"][0].startswith("urn:ietf:params:oauth:request_uri:")
    assert stack.sessions("pending") >= 1
    landed = scripted_login(http, location)
    assert str(landed.url) == stack.app_url + "/headers?a=1&b=2"


def test_nginx_upstream_gets_identity_it_can_trust(stack: Stack, http: httpx2.Client) -> None:
    """After login the app receives the relay's X-Auth-Request-* headers, and values a client
    forges under those names are replaced."""
    landed = scripted_login(http, stack.app_url + "/headers")
    assert landed.json() == ALICE
    forged = http.get(stack.app_url + "/headers", headers=FORGED)
    assert forged.json() == ALICE


def test_nginx_forged_headers_without_session_never_reach_the_app(
    stack: Stack, http: httpx2.Client
) -> None:
    """Forged identity headers without a session get the login redirect, not the app."""
    response = http.get(stack.app_url + "/headers", headers=FORGED, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"].startswith(stack.issuer + "/auth?")


def websocket_status(stack: Stack, cookie: str | None, proxy: str = "nginx") -> tuple[int, bytes]:
    """Open a WebSocket to /ws through a proxy; return the handshake status and, on 101, the
    app's first message."""
    port = stack.ports[proxy]
    conn: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    cafile = caddy_root_certificate(stack.workdir) if proxy == "caddy" else stack.cert
    tls = ssl.create_default_context(cafile=str(cafile))
    conn = tls.wrap_socket(conn, server_hostname="127.0.0.1")
    with conn:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Cookie: __Host-relay_session={cookie}\r\n" if cookie else "")
            + "\r\n"
        )
        conn.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        if status == 101:
            rest = read_text_frame(conn, rest)
        return status, rest


def read_text_frame(conn: socket.socket, data: bytes) -> bytes:
    """The payload of the server's first (unmasked) text frame (RFC 6455 §5.2)."""
    while len(data) < 4:
        data += conn.recv(4096)
    assert data[0] == 0x81, data[:2]  # FIN + text
    length, start = data[1], 2
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 4
    while len(data) < start + length:
        data += conn.recv(4096)
    return data[start : start + length]


def test_nginx_websocket_needs_a_session(stack: Stack, http: httpx2.Client) -> None:
    """A WebSocket upgrade through the protected location is refused without a session and
    accepted with one; the app sees the identity on the upgrade request."""
    status, _ = websocket_status(stack, cookie=None)
    assert status == 302
    status, _ = websocket_status(stack, cookie="A" * 43)
    assert status == 302
    scripted_login(http, stack.app_url + "/headers")
    status, frame = websocket_status(stack, cookie=session_cookie(http))
    assert status == 101
    assert json.loads(frame) == ALICE


# -- Caddy forward_auth ---------------------------------------------------------------------


def test_caddy_sends_browser_navigation_to_login(stack: Stack) -> None:
    """No session: Caddy hands the relay's redirect (to /login with the original URL) to the
    browser."""
    with stack.client(proxy="caddy") as client:
        response = client.get(stack.caddy_url + "/headers?x=1", headers={"Accept": "text/html"})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(stack.public_url + "/login?")
    assert parse_qs(urlsplit(location).query)["rd"] == [stack.caddy_url + "/headers?x=1"]


@pytest.mark.parametrize(
    "headers",
    [{"Accept": "application/json"}, {"X-Requested-With": "XMLHttpRequest"}],
    ids=["json", "xhr"],
)
def test_caddy_gives_api_requests_401(stack: Stack, headers: dict[str, str]) -> None:
    """API and XHR requests without a session get 401, not a login page."""
    with stack.client(proxy="caddy") as client:
        assert client.get(stack.caddy_url + "/headers", headers=headers).status_code == 401
        assert client.post(stack.caddy_url + "/headers").status_code == 401


def test_caddy_upstream_gets_identity_it_can_trust(stack: Stack, http: httpx2.Client) -> None:
    """With a session, Caddy lets the request through with the relay's headers, replacing
    forged ones."""
    scripted_login(http, stack.app_url + "/headers")
    cookie = session_cookie(http)
    with stack.client(proxy="caddy") as client:
        response = client.get(
            stack.caddy_url + "/headers",
            headers={"Cookie": f"__Host-relay_session={cookie}", **FORGED},
        )
    assert response.status_code == 200
    assert response.json() == ALICE


def test_caddy_websocket_needs_a_session(stack: Stack, http: httpx2.Client) -> None:
    """Through Caddy too, a WebSocket upgrade is refused without a session (the browser would
    be sent to the login) and accepted with one."""
    status, _ = websocket_status(stack, cookie=None, proxy="caddy")
    assert status == 302
    scripted_login(http, stack.app_url + "/headers")
    status, frame = websocket_status(stack, cookie=session_cookie(http), proxy="caddy")
    assert status == 101
    assert json.loads(frame) == ALICE
