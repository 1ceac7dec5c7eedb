"""Access rules through the recipes as shipped (deploy/nginx.conf, deploy/Caddyfile), with the
npm oidc-provider's alice (groups admins, staff) and bob (staff) signing in in Chromium: the
/admin/ narrowing, the app's own health check, rules in the relay's config at login and for
existing sessions, rules keyed by host, and the identity headers the app gets."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import Stack
from tests.e2e.stack import caddy_root_certificate

pytestmark = pytest.mark.e2e

# deploy/nginx.conf @relay_forbidden: the relay's own "Not allowed" page (/oauth2/forbidden)
NGINX_FORBIDDEN = "This page is not open to your account."
NOT_IN_GROUP = "You are not in a group allowed here."  # the relay's reason, on its 403 page
ADMINS_ONLY = 'email_domains = ["*"]\nallowed_groups = ["admins"]'


def proxy_url(stack: Stack, proxy: str) -> str:
    return stack.app_url if proxy == "nginx" else stack.caddy_url


def sign_in(page: Any, stack: Stack, account: str, url: str) -> None:
    """Open ``url``, sign in at the provider (login, consent) as ``account``, come back."""
    page.goto(url)
    page.wait_for_url(stack.issuer + "/interaction/**")
    page.fill("input[name=login]", account)
    page.fill("input[name=password]", "any")
    page.click("button[type=submit]")
    page.wait_for_url(stack.issuer + "/interaction/**")  # the consent page
    page.click("button[type=submit]")


def person(browser: Any, stack: Stack, account: str) -> Iterator[Any]:
    """A page in a browser profile of its own, signed in as ``account`` through nginx (the
    session cookie is host-only for 127.0.0.1, so Caddy's port gets it too), signed out
    afterwards: later modules count the stack's sessions."""
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        sign_in(page, stack, account, stack.app_url + "/")
        page.wait_for_url(stack.app_url + "/")
        assert page.inner_text("#user") == account
        yield page
        page.goto(stack.public_url + "/logout")
        page.click("button[type=submit]")
        page.wait_for_url(stack.issuer + "/session/end**")
        page.click("button[value=yes]")
        page.wait_for_url(stack.signed_out_url)
        assert stack.sessions_of(account) == 0
    finally:
        context.close()


@pytest.fixture(scope="module", autouse=True)
def no_logins_left_behind(stack: Stack) -> Iterator[None]:
    """Logins this module starts and leaves at the provider's form (a refused user's next
    visit) are dropped afterwards: test_browser reads the sessions table as if alone in it."""
    start = int(time.time()) - 1
    yield
    assert stack.db is not None
    with stack.db.begin() as conn:
        query = text("DELETE FROM sessions WHERE status = 'pending' AND created_at >= :t")
        conn.execute(query, {"t": start})


@pytest.fixture(scope="module")
def bob(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from person(browser, stack, "bob")


@pytest.fixture(scope="module")
def alice(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from person(browser, stack, "alice")


def session_cookie(page: Any) -> str:
    [value] = [c["value"] for c in page.context.cookies() if c["name"] == "__Host-relay_session"]
    return str(value)


def raw_get(
    stack: Stack, proxy: str, target: str, cookie: str, extra: dict[str, str] | None = None
) -> tuple[int, str]:
    """GET ``target`` exactly as written (no client normalizes it: http.client sends the
    request line as given), as a browser with this session cookie would."""
    cafile = caddy_root_certificate(stack.workdir) if proxy == "caddy" else stack.cert
    tls = ssl.create_default_context(cafile=str(cafile))
    port = stack.ports[proxy]
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=15)
    try:
        conn.request(
            "GET",
            target,
            headers={
                "Accept": "text/html",
                "Cookie": f"__Host-relay_session={cookie}",
                **(extra or {}),
            },
        )
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def shows(page: Any, url: str) -> tuple[int, str]:
    """Open ``url``: the status and the text the person sees."""
    response = page.goto(url)
    assert response is not None
    return response.status, page.inner_text("body")


def app_json(page: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(page.inner_text("body"))
    return data


# -- 1. /admin/ for the admins group only ----------------------------------------------------


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_admin_is_for_admins_only(stack: Stack, bob: Any, alice: Any, proxy: str) -> None:
    """bob (staff) sees the app at / but a 403 page at /admin/ (nginx's own page; Caddy
    passes the relay's "Not allowed" with the reason); alice (admins) opens /admin/."""
    base = proxy_url(stack, proxy)
    assert shows(bob, base + "/")[0] == 200
    assert bob.inner_text("#user") == "bob"

    status, text = shows(bob, base + "/admin/")
    assert status == 403
    if proxy == "nginx":
        assert bob.title() == "Not allowed"
        assert NGINX_FORBIDDEN in text
        assert bob.locator("a", has_text="Sign out").count() == 1  # a way out
    else:
        assert bob.title() == "Not allowed"
        assert NOT_IN_GROUP in text
    assert bob.url == base + "/admin/"  # a refusal, not a trip to the login

    status, _ = shows(alice, base + "/admin/")
    assert status == 200
    assert app_json(alice)["area"] == "admin"
    assert app_json(alice)["x-auth-request-user"] == "alice"


# Spellings of /admin/ a proxy must resolve before it picks its location/handler (those with
# dot segments or encoded slashes never get that far: UNSAFE_RAW_PATHS). The app (Starlette,
# like most) decodes the first to its admin area, so alice gets it there; the others it does
# not resolve (404 for alice), but the proxy must still refuse bob.
TRICKS = [
    "/%61dmin/",
    "//admin/",
    "/ADMIN/",
    "/Admin/x",
    "/%41dmin/",
]


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_path_tricks_do_not_get_around_the_admin_narrowing(
    stack: Stack, bob: Any, alice: Any, proxy: str
) -> None:
    """Percent-encoded, doubled-slash and other-case spellings of /admin/ sent verbatim with
    bob's cookie are still refused (403); alice's cookie on the same spellings passes the
    proxy (so the 403 is the narrowing, not the spelling), to the admin area where the app
    decodes the spelling to it."""
    bob_cookie, alice_cookie = session_cookie(bob), session_cookie(alice)
    for target in TRICKS:
        status, body = raw_get(stack, proxy, target, bob_cookie)
        assert status == 403, (target, status, body[:300])
        assert (NGINX_FORBIDDEN if proxy == "nginx" else NOT_IN_GROUP) in body, target
        status, body = raw_get(stack, proxy, target, alice_cookie)
        assert status != 403, (target, status, body[:300])
    status, body = raw_get(stack, proxy, TRICKS[0], alice_cookie)  # the app's admin area
    assert status == 200 and json.loads(body)["area"] == "admin", (TRICKS[0], status)


# Spellings whose cleaned path leaves /admin/ (or that some servers read as /admin/: Java
# strips ";..." path parameters, Windows reads a backslash as "/"): the proxy would pick the
# general check for them but pass the raw path on, which the app routes into its admin area.
AWAY_FROM_ADMIN = [
    "/admin/../x",
    "/admin/%2e%2e/x",
    "/admin/%2E%2e/healthz",
    "/admin%2f..%2fx",
    "/admin/.%2e/x",
    "/admin;x/",
    "/admin/..;/x",
    "/ADMIN/x",
    "/admin\\x",
    "/admin%5c..%5cx",
]


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_spellings_that_clean_away_from_admin_never_reach_the_admin_area(
    stack: Stack, bob: Any, proxy: str
) -> None:
    """Dot segments (literal or encoded), encoded slashes and backslashes, ";" path
    parameters and another case, sent verbatim with bob's cookie, never get him the app's
    admin area: the proxy refuses them (400, 403) or the app knows no such page (404)."""
    cookie = session_cookie(bob)
    for target in AWAY_FROM_ADMIN:
        status, body = raw_get(stack, proxy, target, cookie)
        assert '"area":"admin"' not in body.replace(" ", ""), (target, status, body[:300])
        assert status in (400, 403, 404), (target, status, body[:300])


# What the recipes refuse with 400 before choosing a location/handler: a raw path (before
# "?") with a dot segment, literal or percent-encoded in any case, an encoded slash or
# backslash, a backslash, or a ";".
UNSAFE_RAW_PATHS = [
    "/x/../y",
    "/x/./y",
    "/x/..",
    "/x/%2e%2e/y",
    "/x/%2E%2E/y",
    "/x/.%2E/y",
    "/x/%2e./y",
    "/x/%2e/y",
    "/x/%2e?a=1",
    "/x%2fy",
    "/x%2Fy",
    "/x%5cy",
    "/x%5Cy",
    "/x\\y",
    "/x;y",
    "/x/..;/y",
    "/admin%2f",
    "/admin/%2e%2e/admin/",
    "/x/../admin/",
    "/x/%2e%2e/admin/",
    "/healthz/../admin/",
    "/./admin/",
    "/%2fadmin/",
]


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_raw_paths_the_proxy_would_clean_are_refused(stack: Stack, bob: Any, proxy: str) -> None:
    """Each unsafe raw spelling gets 400 from the proxy itself (the app never sees it), with a
    session and without one."""
    for cookie in (session_cookie(bob), ""):
        for target in UNSAFE_RAW_PATHS:
            status, body = raw_get(stack, proxy, target, cookie)
            assert status == 400, (target, status, body[:300])


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_ordinary_urls_pass_the_raw_path_rule(
    stack: Stack, bob: Any, alice: Any, proxy: str
) -> None:
    """Everyday URLs are not caught by the 400 rule: dots inside names, dots, slashes and ";"
    in the query, the relay's own pages, the app's health check and alice's /admin/."""
    cookie = session_cookie(bob)
    status, body = raw_get(stack, proxy, "/", cookie)
    assert status == 200 and "id=user>bob<" in body, (status, body[:300])
    status, body = raw_get(stack, proxy, "/headers?a=1&b=2&next=/x/../y;z%2f", cookie)
    assert status == 200 and json.loads(body)["x-auth-request-user"] == "bob", (status, body)
    for target in ("/static/app.min.js", "/.well-known/x", "/x/...y/..z", "/x.."):
        status, body = raw_get(stack, proxy, target, cookie)
        assert status == 404, (target, status, body[:300])  # the app's: it has no such page
    status, body = raw_get(stack, proxy, "/healthz", "")
    assert status == 200 and json.loads(body)["path"] == "/healthz", (status, body)
    status, body = raw_get(stack, proxy, "/oauth2/login?rd=/headers", "")
    assert status == 302, (status, body[:300])  # to the provider: a new login
    status, body = raw_get(stack, proxy, "/admin/", session_cookie(alice))
    assert status == 200 and json.loads(body)["area"] == "admin", (status, body[:300])


# -- 2. the app's health check ---------------------------------------------------------------


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_app_health_check_answers_without_a_session(stack: Stack, proxy: str) -> None:
    """/healthz reaches the app without any session (no login redirect, no 401), while the
    same request to / is refused (401: an API call without a session)."""
    with stack.client(proxy=proxy, headers={"Accept": "application/json"}) as client:
        response = client.get(proxy_url(stack, proxy) + "/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert client.get(proxy_url(stack, proxy) + "/").status_code == 401


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_the_health_check_skip_is_exactly_one_path(stack: Stack, proxy: str) -> None:
    """The path that skips the check reaches the app as /healthz whatever its spelling (the
    proxies match a normalized path but would forward the raw one: /admin/%2e%2e/healthz
    must not land in the admin area), and forged identity headers never reach it."""
    forged = {"X-Auth-Request-User": "mallory", "X-Auth-Request-Groups": "admins"}
    for target in ("/healthz", "/admin/%2e%2e/healthz", "/x/../healthz", "/%68ealthz"):
        status, body = raw_get(stack, proxy, target, "", extra=forged)
        if status == 200:
            answer = json.loads(body)
            assert answer["path"] == "/healthz", (target, answer)
            assert answer["identity"] == {}, (target, answer)
        else:
            assert status in (400, 401, 403, 404), (target, status)
    status, _ = raw_get(stack, proxy, "/healthz", "")
    assert status == 200


# -- 3. a login the rules refuse -------------------------------------------------------------


def test_login_refused_by_the_rules_shows_why_and_keeps_no_session(
    stack: Stack, context: Any
) -> None:
    """With [access] allowed_groups = ["admins"], bob signing in lands on the relay's 403
    "Not allowed" page with the reason and a Sign-out link; no session row is made for him;
    the link signs him out at the provider, so the next visit asks for a login again."""
    page = context.new_page()
    with stack.access_rules(ADMINS_ONLY):
        before = stack.sessions_of("bob")
        responses: list[int] = []
        page.on(
            "response",
            lambda r: responses.append(r.status) if "/oauth2/callback" in r.url else None,
        )
        sign_in(page, stack, "bob", stack.app_url + "/")
        page.wait_for_url(stack.public_url + "/callback?**")
        assert responses == [403]
        assert page.title() == "Not allowed"
        assert NOT_IN_GROUP in page.inner_text("body")
        assert stack.sessions_of("bob") == before
        assert not [c for c in context.cookies() if c["name"] == "__Host-relay_session"]

        page.click("text=Sign out")
        page.wait_for_url(stack.public_url + "/logout")
        page.click("button[type=submit]")
        page.wait_for_url(stack.issuer + "/session/end**")
        page.click("button[value=yes]")
        page.wait_for_url(stack.signed_out_url)
        assert "You are signed out" in page.content()

        page.goto(stack.app_url + "/")
        page.wait_for_url(stack.issuer + "/interaction/**")
        assert page.locator("input[name=login]").count() == 1


# -- 4. changed rules judge existing sessions ------------------------------------------------


def test_rules_changed_by_a_restart_refuse_an_existing_session(stack: Stack, bob: Any) -> None:
    """bob, signed in under rules that let anyone in, gets the 403 page at his next page load
    once the relay restarts with rules for admins only (through nginx and Caddy, no login
    loop), and the app again after the rules are put back."""
    assert shows(bob, stack.app_url + "/")[0] == 200
    with stack.access_rules(ADMINS_ONLY):
        status, text = shows(bob, stack.app_url + "/")
        assert (status, bob.url) == (403, stack.app_url + "/")
        assert NGINX_FORBIDDEN in text
        status, text = shows(bob, stack.caddy_url + "/")
        assert (status, bob.url) == (403, stack.caddy_url + "/")
        assert bob.title() == "Not allowed"
        assert NOT_IN_GROUP in text
        assert stack.sessions_of("bob") >= 1  # refused, not signed out
    assert shows(bob, stack.app_url + "/")[0] == 200
    assert bob.inner_text("#user") == "bob"


# -- 5. rules keyed by host ------------------------------------------------------------------


@pytest.mark.parametrize("restricted", ["caddy", "nginx"])
def test_host_rules_apply_to_their_host_only(
    stack: Stack, bob: Any, alice: Any, restricted: str
) -> None:
    """[access.hosts."<one proxy's host:port>"] allowed_groups = ["admins"]: bob gets 403
    through that proxy (the host his browser sent, forwarded to the check) but the app
    through the other (another host:port); alice gets the app through the restricted one."""
    other = "nginx" if restricted == "caddy" else "caddy"
    host = f"127.0.0.1:{stack.ports[restricted]}"
    rules = f'email_domains = ["*"]\n\n[access.hosts."{host}"]\nallowed_groups = ["admins"]'
    with stack.access_rules(rules):
        status, text = shows(bob, proxy_url(stack, restricted) + "/")
        assert status == 403
        assert (NGINX_FORBIDDEN if restricted == "nginx" else NOT_IN_GROUP) in text
        assert stack.relay is not None
        denied = json.loads(stack.relay.wait_for('"access.denied"', timeout=10))
        assert denied["detail"] == f"host {host}"  # the host rule, not another one
        assert shows(bob, proxy_url(stack, other) + "/")[0] == 200
        assert bob.inner_text("#user") == "bob"
        assert shows(alice, proxy_url(stack, restricted) + "/")[0] == 200
        assert alice.inner_text("#user") == "alice"


def host_spellings(stack: Stack, proxy: str) -> list[tuple[str, dict[str, str]]]:
    """Requests that the proxy routes to the restricted host while naming it otherwise: each
    (request target, headers). The security review's spellings, with the test's host."""
    port = stack.ports[proxy]
    if proxy == "nginx":
        # nginx routes on the text before the first ":" and on an absolute-form target before
        # the Host header; the recipe's server is the only one, the default for any name.
        return [
            ("/headers", {"Host": "127.0.0.1:1:2"}),
            ("/headers", {"Host": "127.0.0.1:x:y"}),
            ("/headers", {"Host": "127.0.0.1:443:"}),
            (f"https://127.0.0.1:{port}/headers", {"Host": "other.example"}),
            ("/headers", {"Host": "other.example"}),
        ]
    if proxy == "haproxy":
        # HAProxy has one frontend: without the recipe's own-name rule any Host reaches the app.
        return [
            ("/headers", {"Host": "127.0.0.1:1:2"}),
            ("/headers", {"Host": "[127.0.0.1]"}),
            ("/headers", {"Host": "other.example"}),
            (f"https://127.0.0.1:{port}/headers", {"Host": "other.example"}),
        ]
    # Caddy strips brackets from a Host before it matches the site's name.
    return [
        ("/headers", {"Host": "[127.0.0.1]"}),
        ("/headers", {"Host": f"[127.0.0.1]:{port}"}),
    ]


@pytest.mark.parametrize("cache", ["cached", "uncached"])
@pytest.mark.parametrize("proxy", ["nginx", "caddy", "haproxy"])
def test_host_rules_hold_for_every_spelling_of_the_host(
    stack: Stack, bob: Any, proxy: str, cache: str
) -> None:
    """With a host rule for the proxy's host, bob (staff) never reaches the app however the
    request spells that host: a port that is not one, brackets, an absolute-form target
    with another Host, or another name the recipe's only server would answer for. On the
    shortcut (a session the cache holds) and with the cache off (every check routed)."""
    host = f"127.0.0.1:{stack.ports[proxy]}"
    rules = f'email_domains = ["*"]\n\n[access.hosts."{host}"]\nallowed_groups = ["admins"]'
    if cache == "uncached":
        rules += "\n\n[cache]\nmax_entries = 0"
    cookie = session_cookie(bob)
    with stack.access_rules(rules):
        for target, headers in host_spellings(stack, proxy):
            for _ in range(2):  # the first check reads the table, the next may be the cache's
                status, body = raw_get(stack, proxy, target, cookie, headers)
                assert "x-auth-request-user" not in body, (target, headers, status)
                assert status != 200 or body == "", (target, headers, status)
        # The plain spelling is judged by the host rule too, and the app stays reachable for
        # whom the rule admits (alice's browser elsewhere): the refusals above are the rule's.
        assert raw_get(stack, proxy, "/headers", cookie)[0] == 403


# -- 6. the identity headers -----------------------------------------------------------------


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_app_gets_the_preferred_username_and_never_a_forged_one(
    stack: Stack, bob: Any, proxy: str
) -> None:
    """The app receives X-Auth-Request-Preferred-Username from the relay; a value the browser
    sends under that name (or the access token's) is replaced or removed."""
    page = bob.context.new_page()
    try:
        page.set_extra_http_headers(
            {
                "X-Auth-Request-Preferred-Username": "mallory",
                "X-Auth-Request-Groups": "admins",
                "X-Auth-Request-Access-Token": "forged-token",
            }
        )
        assert shows(page, proxy_url(stack, proxy) + "/headers")[0] == 200
        headers = app_json(page)
    finally:
        page.close()
    assert headers["x-auth-request-preferred-username"] == "bob"
    assert headers["x-auth-request-groups"] == "staff"
    assert "x-auth-request-access-token" not in headers
