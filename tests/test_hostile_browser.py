"""A browser that lies: forged cookies, odd cookie sets, and the cookie attributes that keep
other sites and subdomains out."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from relay.crypto import new_id
from tests.conftest import callback_path, provider_redirect, sign_in
from tests.provider import TestProvider


def raw_get(relay: TestClient, path: str, cookie_header: str) -> Any:
    relay.cookies.clear()
    return relay.get(path, headers={"Cookie": cookie_header, "Accept": "application/json"})


@pytest.mark.parametrize(
    "cookie_header",
    [
        "__Host-relay_session=" + "A" * 10_000,
        "__Host-relay_session=a; __Host-relay_session=b; __Host-relay_session=c",
        "__Host-relay_session=" + new_id() + "; __Host-relay_session=" + new_id(),
        "__Host-relay_session",
        "__Host-relay_session=;",
        '__Host-relay_session="quoted"',
        "__Host-relay_session=%00%0d%0a",
        "=; ; ;;",
        "relay_session=" + new_id(),  # without the prefix: not the cookie we set
    ],
    ids=[
        "oversized",
        "repeated-junk",
        "repeated-unknown",
        "no-value",
        "empty",
        "quoted",
        "encoded-controls",
        "nonsense",
        "unprefixed",
    ],
)
@pytest.mark.parametrize("path", ["/auth", "/auth/redirect", "/userinfo", "/"])
def test_odd_cookie_headers_are_401_not_5xx(
    relay: TestClient, path: str, cookie_header: str
) -> None:
    """Oversized, repeated, empty or malformed session cookies are refused (the home page
    shows "not signed in"), never a 5xx."""
    response = raw_get(relay, path, cookie_header)
    assert response.status_code == (200 if path == "/" else 401)
    if path == "/":
        assert "Not signed in" in response.text


def test_unprefixed_cookie_cannot_stand_in_for_the_host_cookie(
    relay: TestClient, provider: TestProvider
) -> None:
    """A valid id planted under the unprefixed name (as a sibling subdomain could) is ignored."""
    sign_in(relay, provider)
    value = relay.cookies["__Host-relay_session"]
    assert raw_get(relay, "/auth", f"relay_session={value}").status_code == 401
    assert raw_get(relay, "/auth", f"__Host-relay_session={value}").status_code == 200


def set_cookie_header(response: Any, name: str) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    return header


def test_session_cookie_attributes(relay: TestClient, provider: TestProvider) -> None:
    """Secure and host-only: __Host- prefix, HttpOnly, Secure, SameSite=Lax, Path=/, no Domain."""
    done = sign_in(relay, provider)
    header = set_cookie_header(done, "__Host-relay_session").lower()
    for attribute in ("httponly", "secure", "samesite=lax", "path=/", "max-age=604800"):
        assert attribute in header
    assert "domain=" not in header
    login = set_cookie_header(relay.get("/login"), "__Host-relay_session_login").lower()
    for attribute in ("httponly", "secure", "samesite=lax", "path=/", "max-age=600"):
        assert attribute in login


def test_cookie_domain_drops_the_host_prefix(make_relay: Any, provider: TestProvider) -> None:
    """With cookie_domain the cookie is shared with subdomains, so it cannot be __Host-."""
    with make_relay(session={"cookie_domain": "relay.test"}) as relay:
        done = sign_in(relay, provider)
        header = set_cookie_header(done, "relay_session").lower()
    assert "domain=relay.test" in header and "secure" in header


def test_insecure_cookie_for_local_development(make_relay: Any) -> None:
    """cookie_secure = false (http://localhost): no Secure flag, so no __Host- prefix."""
    server = {"public_url": "http://localhost:4180"}
    with make_relay(server=server, session={"cookie_secure": False}) as relay:
        header = set_cookie_header(relay.get("/login"), "relay_session_login").lower()
    assert "secure" not in header and "httponly" in header


@pytest.mark.parametrize("path", ["/", "/logout", "/login", "/callback", "/auth", "/userinfo"])
def test_pages_are_not_cacheable_framable_or_leaky(relay: TestClient, path: str) -> None:
    """Every relay response: no-store, no-referrer (the code never leaks via Referer), a CSP
    with default-src 'none' and frame-ancestors 'none'."""
    headers = relay.get(path).headers
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no scripts at all
    assert headers["x-frame-options"] == "DENY"


def test_callback_response_hides_the_code_from_the_next_page(
    relay: TestClient, provider: TestProvider
) -> None:
    """The redirect that carries the browser on from /callback?code=... says no-referrer."""
    done = sign_in(relay, provider, rd="https://app.test/")
    assert done.headers["referrer-policy"] == "no-referrer"
    assert done.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"Accept": "application/json"}),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}),
        ("GET", {"Sec-Fetch-Mode": "cors", "Accept": "*/*"}),
        ("POST", {"Accept": "text/html"}),
        ("PUT", {}),
        ("DELETE", {}),
        ("GET", {"X-Forwarded-Method": "POST"}),  # from the trusted proxy: the original method
    ],
    ids=["json", "xhr", "fetch", "post", "put", "delete", "forwarded-post"],
)
def test_login_answers_api_calls_with_401(
    make_relay: Any, db: Engine, method: str, headers: dict[str, str]
) -> None:
    """nginx's error_page hands /login every request that lacked a session: a script, an API
    client or a form post gets 401 (no redirect to the provider, no pending login)."""
    with make_relay(peer="127.0.0.1") as relay:
        response = relay.request(method, "/login", headers=headers)
    assert response.status_code == 401
    assert "location" not in response.headers
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sessions")).scalar_one() == 0


def test_login_still_sends_a_navigation_to_the_provider(relay: TestClient) -> None:
    """A browser loading a page (Sec-Fetch-Mode: navigate, Accept: text/html) is redirected."""
    headers = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html,application/xhtml+xml"}
    assert relay.get("/login", headers=headers).status_code == 302


# -- cookie tossing: cookie_domain or cookie_secure = false, where a sibling can plant cookies


def test_a_planted_login_cookie_does_not_outlive_the_next_login(
    make_relay: Any, provider: TestProvider, db: Engine
) -> None:
    """An attacker starts a login, gets to the provider's answer and stops; it plants its
    login cookie in the victim's browser (cookie_domain: a sibling subdomain can). The victim
    starts a login of its own: it gets a fresh login cookie, so the attacker's callback,
    opened in the victim's browser, is refused and signs nobody in as the attacker."""
    with make_relay(session={"cookie_domain": "relay.test"}) as attacker:
        started = attacker.get("/login")
        planted = attacker.cookies["relay_session_login"]
        evil_callback = callback_path(provider_redirect(provider, started.headers["location"]))
    with make_relay(session={"cookie_domain": "relay.test"}) as victim:
        victim.cookies.set("relay_session_login", planted, domain=".relay.test")
        assert victim.get("/login").status_code == 302
        assert victim.cookies["relay_session_login"] != planted
        refused = victim.get(evil_callback)
    assert refused.status_code == 400
    assert "relay_session" not in victim.cookies
    assert session_rows(db) == 0


def session_rows(db: Engine) -> int:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM sessions WHERE status = 'active'"))
        return int(rows.scalar_one())


@pytest.mark.parametrize("path", ["/auth", "/auth/redirect", "/userinfo"])
@pytest.mark.parametrize("planted_first", [True, False], ids=["planted-first", "planted-last"])
def test_two_session_cookies_are_no_session(
    relay: TestClient, provider: TestProvider, path: str, planted_first: bool
) -> None:
    """A request carrying our session cookie and a second one of the same name (planted by a
    sibling, under its own Domain or Path) is answered as signed out, whichever comes first:
    the relay never picks one. The cached session's shortcut and the routed check agree."""
    sign_in(relay, provider)
    mine = relay.cookies["__Host-relay_session"]
    assert raw_get(relay, path, f"__Host-relay_session={mine}").status_code == 200
    cookies = [f"__Host-relay_session={mine}", f"__Host-relay_session={new_id()}"]
    header = "; ".join(reversed(cookies) if planted_first else cookies)
    assert raw_get(relay, path, header).status_code == 401


def test_two_login_cookies_at_the_callback_are_refused(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A callback carrying two login cookies (ours and a planted one) is refused with a page
    saying to clear the site's cookies; no session, whichever of the two the state is bound
    to."""
    started = relay.get("/login")
    mine = relay.cookies["__Host-relay_session_login"]
    callback = callback_path(provider_redirect(provider, started.headers["location"]))
    header = f"__Host-relay_session_login={new_id()}; __Host-relay_session_login={mine}"
    relay.cookies.clear()
    refused = relay.get(callback, headers={"Cookie": header})
    assert refused.status_code == 400
    assert "two sign-in cookies" in refused.text
    assert session_rows(db) == 0


def test_two_session_cookies_stop_at_login_rather_than_loop(relay: TestClient) -> None:
    """/auth answers 401 to two session cookies and the proxy sends the browser to /login;
    a new login cannot remove the planted cookie, so /login says what to do instead of
    sending the browser round again."""
    header = f"__Host-relay_session={new_id()}; __Host-relay_session={new_id()}"
    relay.cookies.clear()
    response = relay.get("/login", headers={"Cookie": header, "Accept": "text/html"})
    assert response.status_code == 400
    assert "Clear this site&#x27;s cookies" in response.text
