"""relay.guard: the helper for Python apps, against a running relay (in process)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.guard import AnswerCache, Identity, RelayGuard, identity_from_headers
from tests.conftest import PUBLIC_URL, FakeClock, sign_in
from tests.live import eventually
from tests.process import free_port
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


# --- skip rules, the answer cache, and what the relay is asked ---------------------------


class CountingRelay(httpx2.AsyncBaseTransport):
    """A real transport to the relay's own test client that counts the /auth calls and keeps
    the Cookie header each one carried."""

    def __init__(self, relay: TestClient) -> None:
        self.relay = relay
        self.cookies: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.cookies)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.cookies.append(request.headers.get("cookie", ""))
        response = self.relay.get(request.url.path, headers={"cookie": self.cookies[-1]})
        return httpx2.Response(response.status_code, headers=response.headers)


async def echo_path(request: Request) -> JSONResponse:
    who = request.state.relay_identity
    return JSONResponse({"path": request.url.path, "email": None if who is None else who.email})


def skipping_app(transport: httpx2.AsyncBaseTransport, **options: Any) -> RelayGuard:
    app = Starlette(routes=[Route("/{path:path}", echo_path)])
    options.setdefault("skip_paths", ["/healthz"])
    options.setdefault("skip_prefixes", ["/static/"])
    return RelayGuard(app, relay_url=PUBLIC_URL, transport=transport, **options)


def session_cookie(relay: TestClient, provider: TestProvider) -> str:
    sign_in(relay, provider)
    return "__Host-relay_session=" + relay.cookies["__Host-relay_session"]


API = {"X-Requested-With": "XMLHttpRequest"}


def test_skip_rules_pass_without_a_session_and_without_asking_the_relay(
    relay: TestClient, provider: TestProvider
) -> None:
    """An exact skip path and paths under a skip prefix reach the app with no session and no
    /auth call (relay_identity is None there); neighbours of the rules are still guarded."""
    counting = CountingRelay(relay)
    app = TestClient(skipping_app(counting), base_url="http://app.test", follow_redirects=False)
    cookie = session_cookie(relay, provider)
    for path in ("/healthz", "/static/app.css", "/static/img/logo.png", "/static/"):
        response = app.get(path, headers={"cookie": cookie})
        assert response.status_code == 200, path
        assert response.json() == {"path": path, "email": None}
    assert counting.calls == 0
    for path in ("/healthz/", "/healthz/x", "/healthzz", "/static", "/static-admin", "/"):
        assert app.get(path, headers=API).status_code == 401, path
    assert counting.calls == 0  # no relay cookie: nothing to ask


def test_skip_rules_must_be_plain_paths() -> None:
    """Rules that are not plain absolute paths, and prefixes not ending in "/", are refused
    when the guard is built, not silently matched."""
    app = Starlette()
    for rule in ("healthz", "/a/../b", "/a//b", "/a/./b", "/a%2fb", "/x.", "/a;b", "/a\\b"):
        with pytest.raises(ValueError, match="skip rule"):
            RelayGuard(app, relay_url=PUBLIC_URL, skip_paths=[rule])
    for prefix in ("/static", "/", "static/", "/static/../"):
        with pytest.raises(ValueError, match="skip rule"):
            RelayGuard(app, relay_url=PUBLIC_URL, skip_prefixes=[prefix])


@pytest.fixture(scope="module", params=["h11", "httptools"])
def served_guard(request: pytest.FixtureRequest) -> Iterator[int]:
    """The guarded app under uvicorn (h11 and httptools), so the paths are parsed by a real
    server from the bytes sent; no relay is reachable, and none is needed without a cookie."""

    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("the relay was asked")

    port = free_port()
    config = uvicorn.Config(
        skipping_app(_SyncBridge(unreachable)),
        host="127.0.0.1",
        port=port,
        http=request.param,
        # No log_level: uvicorn would set it on its loggers for the rest of the session.
        log_config=None,
        log_level=None,
        ws="none",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, 10, "the guarded app listens")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def raw_get(port: int, target: bytes) -> int:
    """Send ``GET target`` byte for byte (no client normalises it); return the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: app.test\r\n"
            b"X-Requested-With: XMLHttpRequest\r\nConnection: close\r\n\r\n"
        )
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


PLAIN = [b"/healthz", b"/static/app.css", b"/static/%61pp.css", b"/static/a%20b.css"]
TRICKS = [
    b"/static/../admin",
    b"/static/./../admin",
    b"/static/%2e%2e/admin",
    b"/static/%2E%2E/admin",
    b"/static/.%2e/admin",
    b"/static/..%2fadmin",
    b"/static%2f..%2fadmin",
    b"/static/%252e%252e/admin",
    b"/static/..%5cadmin",
    b"/static/..;/admin",
    b"/static//admin",
    b"/static%2fadmin",
    b"/static/admin.",
    b"/static/admin%2e",
    b"/static/admin%20",
    b"/static/x%00",
    b"/healthz.",
    b"/healthz/",
    b"/healthz/.",
    b"/healthz%2f",
    b"//healthz",
    b"/HEALTHZ",
    b"/healthz;x",
    b"/%2e/healthz",
]


@pytest.mark.parametrize("target", PLAIN, ids=[t.decode() for t in PLAIN])
def test_plain_paths_under_a_skip_rule_are_skipped(served_guard: int, target: bytes) -> None:
    """The control group: a skip path, a path under a skip prefix, and an unreserved character
    percent-encoded all reach the app without a session."""
    assert raw_get(served_guard, target) == 200


@pytest.mark.parametrize("target", TRICKS, ids=[t.decode() for t in TRICKS])
def test_path_tricks_do_not_reach_a_skip_rule(served_guard: int, target: bytes) -> None:
    """Dot segments (plain or encoded), encoded separators, double encoding, //, ;, trailing
    dots or spaces, NUL, case: none is skipped; without a session each is a 401, never the
    app."""
    assert raw_get(served_guard, target) == 401


def test_a_path_that_is_not_the_bytes_received_is_not_skipped() -> None:
    """A server that hands the app a path other than its raw_path decoded once (one that
    normalises, say) gets no skip: the rule is matched only where both agree."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise AssertionError("the relay was asked")

    guard = skipping_app(_SyncBridge(unreachable))
    for path, raw in (("/static/app.css", b"/admin/../static/app.css"), ("/healthz", b"/x")):
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": raw,
            "query_string": b"",
            "headers": [(b"host", b"app.test"), (b"x-requested-with", b"XMLHttpRequest")],
        }
        asyncio.run(guard(scope, receive, send))
    assert statuses == [401, 401]


def test_without_the_relay_cookie_the_relay_is_not_asked(
    relay: TestClient, provider: TestProvider
) -> None:
    """Other cookies alone cost no /auth call (the relay could only say 401); with the relay
    cookie, only that cookie is sent to the relay, never the app's others."""
    counting = CountingRelay(relay)
    app = TestClient(skipping_app(counting), base_url="http://app.test", follow_redirects=False)
    assert app.get("/x", headers={"cookie": "app_prefs=dark; theme=1"}).status_code == 302
    assert app.get("/x", headers={**API, "cookie": "relay_sessionx=1"}).status_code == 401
    assert counting.calls == 0
    cookie = session_cookie(relay, provider)
    response = app.get("/x", headers={"cookie": f"app_prefs=dark; {cookie}; theme=1"})
    assert response.json()["email"] == "alice@example.com"
    assert counting.cookies == [cookie]


def test_cached_answers_do_not_ask_the_relay_until_the_ttl_runs_out(
    relay: TestClient, provider: TestProvider
) -> None:
    """Within cache_ttl a signed-in user's requests cost one /auth call in all; at the TTL the
    relay is asked again. The cache holds a hash of the cookie, never the cookie."""
    counting, clock = CountingRelay(relay), FakeClock()
    guard = skipping_app(counting, cache_ttl=1.0, clock=clock)
    app = TestClient(guard, base_url="http://app.test")
    cookie = session_cookie(relay, provider)
    for _ in range(10):
        assert app.get("/x", headers={"cookie": cookie}).json()["email"] == "alice@example.com"
        clock.advance(0.0625)  # 1/16 s: exact in binary, as the sum must be
    assert counting.calls == 1
    clock.advance(0.375)  # 1.0 s after the answer
    assert app.get("/x", headers={"cookie": cookie}).status_code == 200
    assert counting.calls == 2
    value = cookie.split("=", 1)[1]
    assert value not in repr(guard.cache.__dict__)


def test_revocation_is_seen_once_the_ttl_runs_out(
    relay: TestClient, provider: TestProvider
) -> None:
    """A logout at the relay reaches the app at the latest cache_ttl later: until then the
    cached 200 stands (the documented delay), after it the browser goes to the login."""
    clock = FakeClock()
    app = TestClient(
        skipping_app(CountingRelay(relay), cache_ttl=1.0, clock=clock),
        base_url="http://app.test",
        follow_redirects=False,
    )
    cookie = session_cookie(relay, provider)
    assert app.get("/x", headers={"cookie": cookie}).status_code == 200
    assert relay.post("/logout", headers={"Origin": PUBLIC_URL}).status_code == 303
    clock.advance(0.75)
    assert app.get("/x", headers={"cookie": cookie}).status_code == 200
    clock.advance(0.25)
    assert app.get("/x", headers={"cookie": cookie}).status_code == 302


def test_a_refusal_is_cached_too(relay: TestClient) -> None:
    """A 401 is a verdict on that cookie value (session ids never come back): repeated
    requests with a dead cookie cost one /auth call per TTL."""
    counting, clock = CountingRelay(relay), FakeClock()
    app = TestClient(skipping_app(counting, clock=clock), base_url="http://app.test")
    dead = {**API, "cookie": "__Host-relay_session=" + "A" * 43}
    for _ in range(5):
        assert app.get("/x", headers=dead).status_code == 401
    assert counting.calls == 1
    clock.advance(1)
    assert app.get("/x", headers=dead).status_code == 401
    assert counting.calls == 2


def test_a_zero_ttl_asks_the_relay_every_time(relay: TestClient, provider: TestProvider) -> None:
    """cache_ttl = 0 turns the cache off."""
    counting = CountingRelay(relay)
    app = TestClient(skipping_app(counting, cache_ttl=0), base_url="http://app.test")
    cookie = session_cookie(relay, provider)
    for _ in range(3):
        assert app.get("/x", headers={"cookie": cookie}).status_code == 200
    assert counting.calls == 3


def test_the_cache_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    """Past cache_max_entries the entry used longest ago leaves; a hit counts as a use."""
    cache = AnswerCache(ttl=1.0, max_entries=2, clock=FakeClock())
    cache.put(b"a", "signed_out")
    cache.put(b"b", "signed_out")
    assert cache.get(b"a") == "signed_out"
    cache.put(b"c", "forbidden")
    assert len(cache) == 2
    assert cache.get(b"b") is None
    assert cache.get(b"a") == "signed_out"
    assert cache.get(b"c") == "forbidden"


def test_the_guard_keeps_its_cache_bounded(relay: TestClient) -> None:
    """Many distinct cookies never hold more than cache_max_entries answers."""
    guard = skipping_app(CountingRelay(relay), cache_max_entries=3)
    app = TestClient(guard, base_url="http://app.test")
    for n in range(10):
        cookie = f"__Host-relay_session={n:043d}"
        assert app.get("/x", headers={**API, "cookie": cookie}).status_code == 401
    assert len(guard.cache) == 3


def test_concurrent_requests_share_one_relay_call(
    relay: TestClient, provider: TestProvider
) -> None:
    """Requests with the same cookie that arrive while /auth is in flight wait for its answer
    instead of asking again, even with the cache off."""
    counting = CountingRelay(relay)
    guard = skipping_app(counting, cache_ttl=0)
    cookie = session_cookie(relay, provider).encode()
    statuses: list[int] = []

    async def one_request() -> None:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "raw_path": b"/x",
            "query_string": b"",
            "headers": [(b"host", b"app.test"), (b"cookie", cookie)],
            "scheme": "http",
            "server": ("app.test", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await guard(scope, receive, send)

    async def burst() -> None:
        # Each task runs up to its first suspension in turn, so all five are waiting before
        # the first /auth call is made: without sharing, each would make its own.
        await asyncio.gather(*(one_request() for _ in range(5)))

    asyncio.run(burst())
    assert statuses == [200] * 5
    assert counting.calls == 1


def test_relay_trouble_is_502_and_not_remembered() -> None:
    """A relay that answers 503 (its database is down) gives 502, not a 401 that would send
    signed-in users to the login, and the next request asks again."""
    answers = [503, 503]

    def troubled(request: httpx2.Request) -> httpx2.Response:
        status = answers.pop(0)
        return httpx2.Response(status)

    app = TestClient(skipping_app(_SyncBridge(troubled)), base_url="http://app.test")
    headers = {"cookie": "__Host-relay_session=x"}
    assert app.get("/x", headers=headers).status_code == 502
    assert app.get("/x", headers=headers).status_code == 502
    assert answers == []


def test_a_forbidden_user_gets_403_not_a_login_loop() -> None:
    """A 403 from the relay (signed in, but its access rules say no) is a 403 for browsers
    too: sending them to the login would only bring them back."""

    def forbidden(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(403)

    app = TestClient(
        skipping_app(_SyncBridge(forbidden)), base_url="http://app.test", follow_redirects=False
    )
    response = app.get("/x", headers={"cookie": "__Host-relay_session=x"})
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Accept": "text/html,application/xhtml+xml"},
        {"Accept": "application/json"},
        {"Accept": "application/json", "Sec-Fetch-Mode": "navigate"},
        {"Accept": "application/json, text/html"},
        {"X-Requested-With": "XMLHttpRequest"},
        {"Sec-Fetch-Mode": "cors", "Accept": "*/*"},
    ],
    ids=["bare", "page", "json", "json-navigate", "json-or-html", "xhr", "fetch"],
)
def test_guard_tells_pages_from_api_calls_as_the_relay_does(
    relay: TestClient, headers: dict[str, str]
) -> None:
    """Without a session the guard answers as the relay's /auth/redirect does: a page load
    goes to the login (302), a script or a client asking for JSON gets 401."""
    expected = relay.get("/auth/redirect", headers=headers).status_code
    assert guarded(relay).get("/", headers=headers).status_code == expected


def test_a_group_with_a_comma_never_reads_as_two(relay: TestClient, provider: TestProvider) -> None:
    """A group named "x,admins" is not the group admins for the app: the relay and the
    guard read X-Auth-Request-Groups alike, and neither sees admins in it."""
    provider.profile["groups"] = ["x,admins", "staff"]
    cookie = session_cookie(relay, provider)
    assert guarded(relay).get("/", headers={"cookie": cookie}).json()["groups"] == ["staff"]
    assert relay.get("/auth?allowed_groups=admins").status_code == 403
