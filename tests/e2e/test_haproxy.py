"""HAProxy in front of an app (deploy/haproxy.cfg and deploy/haproxy-auth.lua as shipped), with
the npm oidc-provider's alice (groups admins, staff) and bob (staff) signing in in Chromium:
the check, the identity headers, the /admin/ narrowing, the raw-path rule, the health check,
the cookies, and the X-Forwarded-For line HAProxy appends after the client's (issue 14.2)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text

from tests.e2e.conftest import Stack
from tests.e2e.stack import haproxy_service
from tests.e2e.test_access import (
    AWAY_FROM_ADMIN,
    TRICKS,
    UNSAFE_RAW_PATHS,
    app_json,
    raw_get,
    session_cookie,
    shows,
    sign_in,
)
from tests.e2e.test_limits import pending_for
from tests.e2e.test_proxies import FORGED, websocket_status
from tests.process import free_port

pytestmark = pytest.mark.e2e

FORBIDDEN = "You do not have access to this page"  # deploy/haproxy.cfg's 403 page
UNAVAILABLE = "Sign-in is briefly unavailable"  # and its 503 page
NAVIGATE = {"Accept": "text/html"}


@pytest.fixture(scope="module", autouse=True)
def no_logins_left_behind(stack: Stack) -> Iterator[None]:
    """Logins this module starts and never finishes are dropped afterwards: test_browser
    reads the sessions table as if alone in it."""
    start = int(time.time()) - 1
    yield
    assert stack.db is not None
    with stack.db.begin() as conn:
        query = text("DELETE FROM sessions WHERE status = 'pending' AND created_at >= :t")
        conn.execute(query, {"t": start})


def person(browser: Any, stack: Stack, account: str) -> Iterator[Any]:
    """A page in a browser profile of its own, signed in as ``account`` starting at HAProxy
    (the relay's redirect, its login, back to HAProxy's URL), signed out afterwards (other
    modules may have left sessions of their own)."""
    before = stack.sessions_of(account)
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        sign_in(page, stack, account, stack.haproxy_url + "/")
        page.wait_for_url(stack.haproxy_url + "/")
        assert page.inner_text("#user") == account
        yield page
        page.goto(stack.public_url + "/logout")
        page.click("button[type=submit]")
        page.wait_for_url(stack.issuer + "/session/end**")
        page.click("button[value=yes]")
        page.wait_for_url(stack.signed_out_url)
        assert stack.sessions_of(account) == before
    finally:
        context.close()


@pytest.fixture(scope="module")
def bob(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from person(browser, stack, "bob")


@pytest.fixture(scope="module")
def alice(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from person(browser, stack, "alice")


# -- the check -------------------------------------------------------------------------------


def test_a_browser_without_a_session_is_sent_to_the_login(stack: Stack) -> None:
    """No session: HAProxy hands the relay's redirect (to /login with the original URL,
    query string included) to the browser."""
    with stack.client(proxy="haproxy") as client:
        response = client.get(stack.haproxy_url + "/headers?x=1&y=2", headers=NAVIGATE)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(stack.public_url + "/login?")
    assert parse_qs(urlsplit(location).query)["rd"] == [stack.haproxy_url + "/headers?x=1&y=2"]


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"Accept": "application/json"}),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}),
        ("GET", {"Sec-Fetch-Mode": "cors", "Accept": "*/*"}),
        ("POST", {"Accept": "text/html"}),
    ],
    ids=["json", "xhr", "fetch", "post"],
)
def test_api_calls_without_a_session_get_401(
    stack: Stack, method: str, headers: dict[str, str]
) -> None:
    """API calls, XHR, fetch and POSTs without a session get 401, not a login redirect."""
    with stack.client(proxy="haproxy") as client:
        url = stack.haproxy_url + "/headers"
        response = client.request(method, url, headers=headers, content="{}")
    assert response.status_code == 401
    assert "location" not in response.headers


def test_the_app_gets_the_identity_and_never_a_forged_one(stack: Stack, alice: Any) -> None:
    """Signed in (through HAProxy), alice's page loads reach the app with the relay's
    X-Auth-Request-* headers; values the browser sends under those names are replaced, and
    an access token it sends is removed."""
    page = alice.context.new_page()
    try:
        page.set_extra_http_headers(FORGED)
        assert shows(page, stack.haproxy_url + "/headers")[0] == 200
        headers = app_json(page)
    finally:
        page.close()
    assert headers == {
        "x-auth-request-email": "alice@example.com",
        "x-auth-request-user": "alice",
        "x-auth-request-subject": "alice",
        "x-auth-request-groups": "admins,staff",
        "x-auth-request-preferred-username": "alice",
    }


def test_forged_identity_without_a_session_never_reaches_the_app(stack: Stack) -> None:
    """Forged identity headers without a session get the login redirect, not the app."""
    with stack.client(proxy="haproxy") as client:
        url = stack.haproxy_url + "/headers"
        response = client.get(url, headers={**NAVIGATE, **FORGED})
    assert response.status_code == 302
    assert response.headers["location"].startswith(stack.public_url + "/login?")


def test_a_websocket_needs_a_session(stack: Stack, alice: Any) -> None:
    """A WebSocket upgrade through HAProxy is sent to the login without a session and
    accepted with one; the app sees the identity on the upgrade request."""
    status, _ = websocket_status(stack, cookie=None, proxy="haproxy")
    assert status == 302
    status, frame = websocket_status(stack, cookie=session_cookie(alice), proxy="haproxy")
    assert status == 101
    assert json.loads(frame)["x-auth-request-user"] == "alice"


# -- /admin/ and the raw-path rule -----------------------------------------------------------


def test_admin_is_for_admins_only(stack: Stack, bob: Any, alice: Any) -> None:
    """bob (staff) sees the app at / but HAProxy's 403 page at /admin/ (a refusal, not a
    trip to the login); alice (admins) opens /admin/."""
    assert shows(bob, stack.haproxy_url + "/")[0] == 200
    assert bob.inner_text("#user") == "bob"
    status, page_text = shows(bob, stack.haproxy_url + "/admin/")
    assert status == 403
    assert FORBIDDEN in page_text
    assert bob.url == stack.haproxy_url + "/admin/"
    status, _ = shows(alice, stack.haproxy_url + "/admin/")
    assert status == 200
    assert app_json(alice)["area"] == "admin"
    assert app_json(alice)["x-auth-request-user"] == "alice"


def test_path_tricks_do_not_get_around_the_admin_narrowing(
    stack: Stack, bob: Any, alice: Any
) -> None:
    """HAProxy matches raw paths: percent-encoded, doubled-slash and other-case spellings of
    /admin/ are still refused to bob (403) and passed for alice, to the admin area where the
    app decodes the spelling to it."""
    bob_cookie, alice_cookie = session_cookie(bob), session_cookie(alice)
    for target in TRICKS:
        status, body = raw_get(stack, "haproxy", target, bob_cookie)
        assert status == 403 and FORBIDDEN in body, (target, status, body[:300])
        status, body = raw_get(stack, "haproxy", target, alice_cookie)
        assert status != 403, (target, status, body[:300])
    status, body = raw_get(stack, "haproxy", TRICKS[0], alice_cookie)
    assert status == 200 and json.loads(body)["area"] == "admin", (TRICKS[0], status)


def test_spellings_that_clean_away_from_admin_never_reach_the_admin_area(
    stack: Stack, bob: Any
) -> None:
    """Dot segments, encoded slashes and backslashes, ";" and another case, sent verbatim
    with bob's cookie, never get him the app's admin area."""
    cookie = session_cookie(bob)
    for target in [*AWAY_FROM_ADMIN, "/%61dmin/%zz", "/admin/%zz"]:
        status, body = raw_get(stack, "haproxy", target, cookie)
        assert '"area":"admin"' not in body.replace(" ", ""), (target, status, body[:300])
        assert status in (400, 403, 404), (target, status, body[:300])


def test_raw_paths_a_server_would_clean_are_refused(stack: Stack, bob: Any) -> None:
    """Each unsafe raw spelling, and a "%" that starts no escape, gets 400 from HAProxy
    itself, with a session and without one."""
    for cookie in (session_cookie(bob), ""):
        for target in [*UNSAFE_RAW_PATHS, "/x%zz", "/x%2", "/x%"]:
            status, body = raw_get(stack, "haproxy", target, cookie)
            assert status == 400, (target, status, body[:300])


def test_ordinary_urls_pass_the_raw_path_rule(stack: Stack, bob: Any) -> None:
    """Everyday URLs are not caught by the 400 rule: dots inside names, dots, slashes, ";"
    and escapes in the query, and the relay's own pages."""
    cookie = session_cookie(bob)
    status, body = raw_get(stack, "haproxy", "/headers?a=1&next=/x/../y;z%2f%zz", cookie)
    assert status == 200 and json.loads(body)["x-auth-request-user"] == "bob", (status, body)
    for target in ("/static/app.min.js", "/.well-known/x", "/x/...y/..z", "/x..", "/caf%C3%A9"):
        status, body = raw_get(stack, "haproxy", target, cookie)
        assert status == 404, (target, status, body[:300])  # the app's: it has no such page
    status, body = raw_get(stack, "haproxy", "/oauth2/login?rd=/headers", "")
    assert status == 302, (status, body[:300])  # to the provider: a new login


# -- the health check and the cookies --------------------------------------------------------


def test_the_health_check_skip_is_exactly_one_path(stack: Stack) -> None:
    """/healthz reaches the app without a session, as exactly /healthz whatever its spelling,
    and without forged identity headers; / without a session is still a 401 for an API call."""
    forged = {"X-Auth-Request-User": "mallory", "X-Auth-Request-Groups": "admins"}
    for target in ("/healthz", "/%68ealthz", "/admin/%2e%2e/healthz", "/x/../healthz"):
        status, body = raw_get(stack, "haproxy", target, "", extra=forged)
        if status == 200:
            answer = json.loads(body)
            assert answer["path"] == "/healthz", (target, answer)
            assert answer["identity"] == {}, (target, answer)
        else:
            assert status in (400, 401, 403, 404), (target, status)
    assert raw_get(stack, "haproxy", "/healthz", "")[0] == 200
    assert raw_get(stack, "haproxy", "/%68ealthz", "")[0] == 200
    with stack.client(proxy="haproxy", headers={"Accept": "application/json"}) as client:
        assert client.get(stack.haproxy_url + "/").status_code == 401


def test_the_app_never_sees_the_relay_cookies(stack: Stack, alice: Any) -> None:
    """The app's Cookie header keeps the app's own cookies and loses the relay's session and
    login cookies."""
    session = session_cookie(alice)
    cookies = [
        (f"theme=dark; __Host-relay_session={session}; lang=en", "theme=dark; lang=en"),
        (f"__Host-relay_session={session}; __Host-relay_session_login=x; a=1", "; a=1"),
        (f"__Host-relay_session_login=x; a=1; __Host-relay_session={session}", "; a=1"),
    ]
    with stack.client(proxy="haproxy") as client:
        for sent, expected in cookies:
            seen = client.get(stack.haproxy_url + "/cookies", headers={"Cookie": sent})
            assert seen.json()["cookie"] == expected
        alone = {"Cookie": f"__Host-relay_session={session}"}
        seen = client.get(stack.haproxy_url + "/cookies", headers=alone)
        assert seen.json()["cookie"] in (None, "")


def test_plain_http_is_sent_to_https(stack: Stack) -> None:
    """The recipe's plain-http port only redirects to https."""
    with stack.client(proxy="haproxy") as client:
        plain = client.get(f"http://127.0.0.1:{stack.ports['haproxy_http']}/headers?a=1")
    assert plain.status_code == 301
    assert (
        plain.headers["location"] == f"https://127.0.0.1:{stack.ports['haproxy_http']}/headers?a=1"
    )


# -- X-Forwarded-For: the client's line, then HAProxy's (issue 14.2) -------------------------


def test_a_forged_forwarded_for_line_is_not_a_loopback_client(stack: Stack) -> None:
    """A client at 127.0.9.1 that sends "X-Forwarded-For: 127.0.0.1" through HAProxy (which
    adds its own line after it) is not a loopback reader of /metrics (404), and its login is
    counted against 127.0.9.1; a client really at 127.0.0.1 reads /metrics (200)."""
    forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
    with stack.client("127.0.9.1", proxy="haproxy") as client:
        assert client.get(stack.haproxy_url + "/oauth2/metrics", headers=forged).status_code == 404
        as_loopback = pending_for(stack, "127.0.0.1")
        login = stack.haproxy_url + "/oauth2/login?rd=/headers"
        assert client.get(login, headers={**NAVIGATE, **forged}).status_code == 302
    assert pending_for(stack, "127.0.9.1") == 1
    assert pending_for(stack, "127.0.0.1") == as_loopback
    with stack.client("127.0.0.1", proxy="haproxy") as client:
        assert client.get(stack.haproxy_url + "/oauth2/metrics").status_code == 200


# -- the relay down --------------------------------------------------------------------------


def test_a_retry_page_when_the_relay_is_down(stack: Stack, tmp_path: Path) -> None:
    """HAProxy cannot reach the relay: the app's pages and the relay's own get a 503 page
    that says to retry (the check fails closed)."""
    ports = (free_port(), free_port())
    assert stack.cert is not None
    tls = (stack.cert, stack.cert.with_name("key.pem"))
    haproxy = haproxy_service(
        tmp_path, ports, free_port(), stack.ports["upstream"], tls=tls, name="down"
    )
    haproxy.start(ports[0])
    try:
        with stack.client(proxy="haproxy") as client:
            for path in ("/headers", "/oauth2/login", "/admin/"):
                response = client.get(f"https://127.0.0.1:{ports[0]}{path}", headers=NAVIGATE)
                assert response.status_code == 503, (path, response.text[:300])
                assert UNAVAILABLE in response.text
                assert response.headers["retry-after"] == "10"
    finally:
        haproxy.stop()


def test_a_relay_that_never_answers_fails_closed(stack: Stack, tmp_path: Path) -> None:
    """A relay that accepts the check's connection and never answers (hung, say, on its
    database): HAProxy gives up on it and shows the retry page; the app is not reached."""
    hung = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads
    ports = (free_port(), free_port())
    assert stack.cert is not None
    tls = (stack.cert, stack.cert.with_name("key.pem"))
    relay_port = hung.getsockname()[1]
    haproxy = haproxy_service(
        tmp_path, ports, relay_port, stack.ports["upstream"], tls=tls, name="hung"
    )
    haproxy.start(ports[0])
    try:
        with stack.client(proxy="haproxy", timeout=60) as client:
            started = time.monotonic()
            response = client.get(f"https://127.0.0.1:{ports[0]}/headers", headers=NAVIGATE)
            waited = time.monotonic() - started
        assert response.status_code == 503
        assert UNAVAILABLE in response.text
        assert waited < 30  # the Lua's timeout (3 s) per step, not the client's 60 s
    finally:
        haproxy.stop()
        hung.close()
