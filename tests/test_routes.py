"""Every route's refusals: 401s, 4xx pages, provider failures as 502/503/504."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from joserfc import jws
from sqlalchemy import Engine, text
from starlette.testclient import TestClient, WebSocketDenialResponse

from relay.app import create_app
from relay.crypto import new_id
from tests.conftest import (
    PG_ADMIN,
    PUBLIC_URL,
    base_config,
    callback_path,
    log_lines,
    postgres_database,
    provider_redirect,
    query,
    run_migrations,
    sign_in,
    warm_started,
)
from tests.provider import ProviderTransport, TestProvider

SESSION_COOKIE = "__Host-relay_session"
LOGIN_COOKIE = "__Host-relay_session_login"


def session_count(db: Engine) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM sessions WHERE status='active'")).scalar_one()
        )


# -- /auth, /userinfo -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cookie",
    [None, "", "garbage", "x" * 43, new_id(), new_id()[:-1], new_id() + "A", "a" * 5000],
    ids=[
        "none",
        "empty",
        "garbage",
        "wrong-alphabet-shape",
        "unknown",
        "truncated",
        "long",
        "huge",
    ],
)
@pytest.mark.parametrize("path", ["/auth", "/auth/redirect", "/userinfo"])
def test_no_valid_session_is_401(relay: TestClient, path: str, cookie: str | None) -> None:
    """Missing, malformed or unknown session cookies are a plain 401, never a 5xx."""
    if cookie is not None:
        relay.cookies.set(SESSION_COOKIE, cookie, domain="relay.test")
    response = relay.get(path, headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"].startswith("session.")


def test_tampered_cookie_is_401(relay: TestClient, provider: TestProvider) -> None:
    """Changing one character of a real session cookie gives 401."""
    sign_in(relay, provider)
    cookie = relay.cookies[SESSION_COOKIE]
    flipped = ("B" if cookie[10] == "A" else "A").join([cookie[:10], cookie[11:]])
    relay.cookies.set(SESSION_COOKIE, flipped, domain="relay.test")
    assert relay.get("/auth").status_code == 401


def test_auth_redirect_sends_browser_to_login_with_original_url(
    make_relay: Callable[..., Any],
) -> None:
    """A trusted proxy's X-Forwarded-* become rd for a browser navigation without a session."""
    with make_relay(peer="127.0.0.1") as relay:
        response = relay.get(
            "/auth/redirect",
            headers={
                "Accept": "text/html",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "app.test",
                "X-Forwarded-Uri": "/reports?q=1",
            },
        )
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(PUBLIC_URL + "/login?")
    assert query(location)["rd"] == "https://app.test/reports?q=1"


def test_auth_redirect_ignores_forwarded_headers_from_untrusted_peer(relay: TestClient) -> None:
    """A spoofed X-Forwarded-Uri from a peer that is not a trusted proxy steers nothing."""
    response = relay.get(
        "/auth/redirect",
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Uri": "/phish",
        },
    )
    assert response.status_code == 302
    assert response.headers["location"] == PUBLIC_URL + "/login"


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"X-Requested-With": "XMLHttpRequest"},
        {"Sec-Fetch-Mode": "cors"},
        {"X-Forwarded-Method": "POST"},
    ],
    ids=["json", "xhr", "fetch", "post"],
)
def test_auth_redirect_gives_api_requests_401(
    make_relay: Callable[..., Any], headers: dict[str, str]
) -> None:
    """API, XHR and non-GET requests get 401 from the redirect flavour, not a login page."""
    with make_relay(peer="127.0.0.1") as relay:
        response = relay.get("/auth/redirect", headers=headers)
    assert response.status_code == 401


def test_a_claim_with_cr_lf_reaches_no_header(relay: TestClient, provider: TestProvider) -> None:
    """A claim with CR/LF cannot split the identity headers, nor pass as the name without
    them: the login is refused (tests/test_access.py says more)."""
    provider.profile["preferred_username"] = "alice\r\nX-Injected: 1"
    assert sign_in(relay, provider).status_code == 403
    response = relay.get("/auth")
    assert response.status_code == 401
    assert "x-injected" not in response.headers


# -- /callback ------------------------------------------------------------------------------


def start_login(relay: TestClient, provider: TestProvider) -> dict[str, str]:
    """/login then the provider; return the callback's query parameters."""
    start = relay.get("/login")
    return query(provider_redirect(provider, start.headers["location"]))


def test_callback_without_state_is_400(relay: TestClient, provider: TestProvider) -> None:
    """A callback with no state is refused with a page, not a session."""
    params = start_login(relay, provider)
    del params["state"]
    response = relay.get("/callback?" + urlencode(params))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert SESSION_COOKIE not in relay.cookies


def test_callback_with_unknown_state_is_400(relay: TestClient, provider: TestProvider) -> None:
    """A state /login never issued is refused."""
    params = start_login(relay, provider)
    params["state"] = new_id()
    assert relay.get("/callback?" + urlencode(params)).status_code == 400
    assert SESSION_COOKIE not in relay.cookies


def test_callback_without_login_cookie_is_400(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """Login CSRF: a callback from a browser that did not start the login is refused."""
    params = start_login(relay, provider)
    relay.cookies.delete(LOGIN_COOKIE)
    assert relay.get("/callback?" + urlencode(params)).status_code == 400
    assert session_count(db) == 0


def test_callback_with_other_browsers_login_cookie_is_400(
    make_relay: Callable[..., Any], provider: TestProvider, db: Engine
) -> None:
    """A state bound to one browser's login cookie is refused with another's."""
    with make_relay() as victim, make_relay() as attacker:
        params = start_login(attacker, provider)
        victim.get("/login")  # the victim has a login cookie of its own
        assert victim.get("/callback?" + urlencode(params)).status_code == 400
    assert session_count(db) == 0


def test_callback_with_expired_pending_login_is_400(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """A pending login older than pending_lifetime cannot complete."""
    params = start_login(relay, provider)
    clock.advance(601)
    assert relay.get("/callback?" + urlencode(params)).status_code == 400


def test_callback_provider_error_shows_code_only(relay: TestClient) -> None:
    """error=access_denied gives a 4xx page naming the code, never the provider's text."""
    relay.get("/login")
    response = relay.get(
        "/callback",
        params={"error": "access_denied", "error_description": "<script>alert(1)</script>"},
    )
    assert response.status_code == 400
    assert "access_denied" in response.text
    assert "<script>" not in response.text and "alert(1)" not in response.text


def test_callback_with_wrong_iss_is_400(relay: TestClient, provider: TestProvider) -> None:
    """RFC 9207: an iss parameter naming another issuer is refused."""
    params = start_login(relay, provider)
    params["iss"] = "https://evil.example"
    assert relay.get("/callback?" + urlencode(params)).status_code == 400
    assert provider.calls["token"] == 0


def test_callback_without_code_is_400(relay: TestClient, provider: TestProvider) -> None:
    """A callback with state but no code is refused."""
    params = start_login(relay, provider)
    del params["code"]
    assert relay.get("/callback?" + urlencode(params)).status_code == 400


def test_callback_with_rejected_code_is_400(relay: TestClient, provider: TestProvider) -> None:
    """The token endpoint's invalid_grant becomes a 400 page."""
    params = start_login(relay, provider)
    params["code"] = "not-a-code"
    assert relay.get("/callback?" + urlencode(params)).status_code == 400


@pytest.mark.parametrize(
    ("failure", "status"), [("connect", 503), ("timeout", 504)], ids=["refused", "timeout"]
)
def test_callback_token_endpoint_down(
    relay: TestClient, provider: TestProvider, failure: str, status: int, db: Engine
) -> None:
    """An unreachable or silent token endpoint is a 503/504 page and no session."""
    params = start_login(relay, provider)
    provider.behaviour.network_failures["/token"] = failure
    response = relay.get("/callback?" + urlencode(params))
    assert response.status_code == status
    assert session_count(db) == 0


def test_callback_token_endpoint_500_is_502(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A 5xx from the token endpoint is a 502 page."""
    params = start_login(relay, provider)
    provider.behaviour.token_status = 500
    assert relay.get("/callback?" + urlencode(params)).status_code == 502
    assert session_count(db) == 0


MANGLED_TOKENS = {
    "non-ascii": "at-\u00e9t\u00e9",
    "crlf": "at-1\r\nX-Injected: yes",
    "nul": "at-1\x00",
}


@pytest.mark.parametrize("name", ["access_token", "refresh_token", "id_token"])
@pytest.mark.parametrize("value", list(MANGLED_TOKENS.values()), ids=list(MANGLED_TOKENS))
def test_callback_with_a_mangled_token_is_502_and_no_session(
    relay: TestClient,
    provider: TestProvider,
    *,
    db: Engine,
    log_stream: io.StringIO,
    name: str,
    value: str,
) -> None:
    """A token outside VSCHAR (non-ASCII, CR/LF, NUL: it could not go in a header nor, NUL,
    in PostgreSQL) is the provider's nonsense: 502 with its reason, logged, no session;
    never a 500 from the userinfo call nor a 503 blaming the database."""
    params = start_login(relay, provider)
    provider.behaviour.token_overrides[name] = value
    response = relay.get("/callback?" + urlencode(params), headers={"Accept": "application/json"})
    assert response.status_code == 502
    assert response.json()["error"] == f"token.malformed_{name}"
    failed = [e for e in log_lines(log_stream) if e["event"] == "login.failed"]
    assert failed[-1]["reason"] == f"token.malformed_{name}"
    assert session_count(db) == 0
    assert provider.calls["userinfo"] == 0


def test_callback_with_a_nul_in_sub_is_400_on_both_databases(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """An ID token whose sub holds NUL fails id_token.bad_sub on both databases, rather than
    a session on SQLite and a 503 blaming PostgreSQL, which refuses NUL in text."""
    provider.subject = "user\x00-1"
    params = start_login(relay, provider)
    response = relay.get("/callback?" + urlencode(params), headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "id_token.bad_sub"
    assert session_count(db) == 0


def test_a_sub_with_a_lone_surrogate_is_refused(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """An ID token whose JSON says "sub": "\\ud800" (validly signed: JSON may escape a lone
    surrogate, which no database driver can encode) fails id_token.bad_sub, not a 500."""
    params = start_login(relay, provider)
    grant = provider.grants[params["code"]]
    signed = jws.extract_compact(provider.id_token(grant.nonce, "placeholder-sub").encode())
    claims = {**json.loads(signed.payload), "sub": "\ud800"}
    header = {"alg": "RS256", "kid": provider.rsa_key.kid}
    payload = json.dumps(claims).encode("ascii")  # ensure_ascii: "\\ud800", six characters
    token = jws.serialize_compact(header, payload, provider.rsa_key, algorithms=["RS256"])
    provider.behaviour.token_overrides["id_token"] = token
    response = relay.get("/callback?" + urlencode(params), headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "id_token.bad_sub"
    assert session_count(db) == 0


def test_callback_with_a_token_response_nested_too_deep_is_502(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A token response of arrays nested thousands deep (it fits in the size cap) exhausts
    the JSON parser's stack: a 502 with a reason, not a 500."""
    params = start_login(relay, provider)
    provider.behaviour.token_raw_body = "[" * 5000 + "]" * 5000
    response = relay.get("/callback?" + urlencode(params), headers={"Accept": "application/json"})
    assert response.status_code == 502
    assert response.json()["error"] == "token.nested_too_deep"
    assert session_count(db) == 0


def test_callback_with_bad_id_token_is_400(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """An ID token that fails validation (here: wrong nonce) makes no session."""
    params = start_login(relay, provider)
    provider.behaviour.id_token_claims["nonce"] = "another-nonce"
    response = relay.get("/callback?" + urlencode(params), headers={"Accept": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "id_token.nonce_mismatch"
    assert session_count(db) == 0


# -- /login ---------------------------------------------------------------------------------


def test_login_rd_off_allowed_hosts_falls_back(relay: TestClient, provider: TestProvider) -> None:
    """An rd to a host not allowed is replaced by the default before anything is stored."""
    done = sign_in(relay, provider, rd="https://evil.example/")
    assert done.headers["location"] == PUBLIC_URL + "/"


def test_every_login_gets_a_fresh_login_cookie(relay: TestClient) -> None:
    """Each /login sets a new login id, never the one the browser brought (which someone
    else may have planted); the browser still holds one login cookie."""
    values = []
    for _ in range(11):
        assert relay.get("/login").status_code == 302
        values.append(relay.cookies[LOGIN_COOKIE])
    assert len(set(values)) == 11
    assert [c.name for c in relay.cookies.jar].count(LOGIN_COOKIE) == 1


def test_a_tab_whose_login_was_replaced_offers_to_sign_in_again(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """Three tabs start a login; the newest completes. The older two, bound to login ids the
    browser no longer has, get a 400 page linking to a new login to the tab's own return URL
    (a link, not a redirect loop), and following it completes."""
    starts = [relay.get("/login", params={"rd": f"/tab{i}"}) for i in range(3)]
    callbacks = [provider_redirect(provider, s.headers["location"]) for s in starts]
    newest = relay.get(callback_path(callbacks[2]))
    assert newest.status_code == 302
    assert newest.headers["location"] == "/tab2"
    for i in (0, 1):
        replaced = relay.get(callback_path(callbacks[i]))
        assert replaced.status_code == 400
        assert "replaced by a newer one" in replaced.text
        link = f"login?rd=%2Ftab{i}"
        assert f'<a href="{link}">Start again</a>' in replaced.text
        again = relay.get("/" + link)
        done = relay.get(callback_path(provider_redirect(provider, again.headers["location"])))
        assert done.status_code == 302
        assert done.headers["location"] == f"/tab{i}"
    # Each completed login replaced the browser's session before it: one cookie, one session.
    assert session_count(db) == 1


# -- /logout --------------------------------------------------------------------------------


def test_logout_page_has_a_form(relay: TestClient) -> None:
    """GET /logout only shows a confirmation page; it ends nothing."""
    response = relay.get("/logout")
    assert response.status_code == 200
    assert 'method=post action="https://relay.test/logout"' in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {},
        {"Origin": "null"},
    ],
    ids=["other-origin", "other-origin-lying", "cross-site", "null-cross-site", "none", "null"],
)
def test_cross_origin_logout_is_403(
    relay: TestClient, provider: TestProvider, headers: dict[str, str], db: Engine
) -> None:
    """A POST /logout that is not from the relay's own origin is refused; the session stays."""
    sign_in(relay, provider)
    assert relay.post("/logout", headers=headers).status_code == 403
    assert session_count(db) == 1
    assert relay.get("/auth").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": PUBLIC_URL},
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "same-origin"},
    ],
    ids=["origin", "null-origin-same-site", "no-origin-same-site"],
)
def test_same_origin_logout_ends_the_session(
    relay: TestClient, provider: TestProvider, headers: dict[str, str], db: Engine
) -> None:
    """A logout from the relay's own page ends the session: Origin matches, or (our pages
    being no-referrer) Origin is null and Sec-Fetch-Site says same-origin."""
    sign_in(relay, provider)
    assert relay.post("/logout", headers=headers).status_code == 303
    assert session_count(db) == 0


def test_logout_without_session_still_redirects(relay: TestClient) -> None:
    """Logging out with no session is not an error: there is nothing to end locally."""
    response = relay.post("/logout", headers={"Origin": PUBLIC_URL})
    assert response.status_code == 303


# -- probes and pages -----------------------------------------------------------------------


def test_probes(relay: TestClient) -> None:
    """/healthz and /readyz answer 200 while the database answers."""
    assert relay.get("/healthz").json() == {"status": "ok"}
    assert relay.get("/readyz").json()["database"] == "ok"


def test_relay_pages_carry_security_headers(relay: TestClient) -> None:
    """Every relay response: no-store, no-referrer, no framing."""
    for path in ("/", "/login", "/auth", "/logout", "/callback"):
        headers = relay.get(path).headers
        assert headers["cache-control"] == "no-store", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-request-id"], path


def test_unknown_route_is_404(relay: TestClient) -> None:
    """Paths the relay does not serve are a 404."""
    assert relay.get("/nope").status_code == 404


def test_login_takes_return_url_from_trusted_proxy(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """nginx's error_page hands /login the original request in X-Forwarded-*: it becomes rd,
    query string and all; from an untrusted peer the same headers are ignored."""
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.test",
        "X-Forwarded-Uri": "/reports?a=1&b=2",
    }
    with make_relay(peer="127.0.0.1") as relay:
        start = relay.get("/login", headers=forwarded)
        done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
        assert done.headers["location"] == "https://app.test/reports?a=1&b=2"
    with make_relay() as relay:
        start = relay.get("/login", headers=forwarded)
        done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
        assert done.headers["location"] == PUBLIC_URL + "/"


def test_forwarded_return_url_never_points_into_the_relay(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """A proxied request for the relay's own /login does not make /login the return URL."""
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "relay.test",
        "X-Forwarded-Uri": "/login",
    }
    with make_relay(peer="127.0.0.1") as relay:
        start = relay.get("/login", headers=forwarded)
        done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.headers["location"] == PUBLIC_URL + "/"


def test_auth_always_sends_every_identity_header(relay: TestClient, provider: TestProvider) -> None:
    """With no email or groups from the provider, those headers are sent empty, so a proxy
    copying them replaces any value the client forged."""
    del provider.profile["email"], provider.profile["groups"]
    sign_in(relay, provider)
    response = relay.get("/auth")
    assert response.headers["x-auth-request-email"] == ""
    assert response.headers["x-auth-request-groups"] == ""
    assert response.headers["x-auth-request-user"] == "alice"


def test_auth_makes_no_provider_call(relay: TestClient, provider: TestProvider) -> None:
    """Discovery and JWKS are fetched once and cached: /auth and later logins reuse them."""
    sign_in(relay, provider)
    calls = dict(provider.calls)
    assert calls["discovery"] == 1 and calls["jwks"] == 1 and calls["userinfo"] == 1
    for _ in range(10):
        assert relay.get("/auth").status_code == 200
    sign_in(relay, provider)
    assert provider.calls["discovery"] == 1
    assert provider.calls["jwks"] == 1
    assert provider.calls["token"] == 2


@pytest.mark.postgres
def test_readyz_is_503_when_the_database_is_gone(provider: TestProvider, clock: Any) -> None:
    """/readyz says 503 once the database stops answering, and the process keeps serving."""
    with postgres_database() as url:
        run_migrations(url)
        app = create_app(
            base_config(url),
            transport=ProviderTransport(provider),
            clock=clock,
            run_pruner_task=False,
        )
        with TestClient(app, base_url=PUBLIC_URL) as relay:
            warm_started(relay)
            assert relay.get("/readyz").status_code == 200
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            response = relay.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["database"] == "unavailable: database.unavailable"
            assert body["provider"] == "ok"
            assert relay.get("/healthz").status_code == 200


def test_auth_as_websocket_handshake_answers_like_http(
    relay: TestClient, provider: TestProvider
) -> None:
    """A proxy that keeps the Upgrade headers on its auth request gets the same answer as over
    plain HTTP: 401 without a session, 200 with the identity headers with one."""
    with pytest.raises(WebSocketDenialResponse) as refused, relay.websocket_connect("/auth"):
        pass
    assert refused.value.status_code == 401
    sign_in(relay, provider)
    cookie = {"cookie": f"{SESSION_COOKIE}={relay.cookies[SESSION_COOKIE]}"}
    with (
        pytest.raises(WebSocketDenialResponse) as allowed,
        relay.websocket_connect("/auth", headers=cookie),
    ):
        pass
    assert allowed.value.status_code == 200
    assert allowed.value.headers["x-auth-request-email"] == "alice@example.com"
    relay.cookies.clear()
    with (
        pytest.raises(WebSocketDenialResponse) as redirected,
        relay.websocket_connect("/auth/redirect"),
    ):
        pass
    assert redirected.value.status_code == 302


def test_metrics_only_for_allowed_addresses(make_relay: Callable[..., Any]) -> None:
    """/metrics answers the addresses in server.metrics_allowed (the forwarded client behind a
    trusted proxy) and is a 404 for everyone else."""
    with make_relay(peer="127.0.0.1") as relay:
        local = relay.get("/metrics")
        assert local.status_code == 200
        assert "relay_logins_total" in local.text
        assert relay.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404
    with make_relay() as relay:  # a peer outside the default (loopback) list
        assert relay.get("/metrics").status_code == 404
    with make_relay(
        server={"public_url": PUBLIC_URL, "metrics_allowed": ["198.51.100.0/24"]}
    ) as relay:
        assert relay.get("/metrics").status_code == 200


def test_wrong_client_secret_is_a_misconfiguration_page(
    make_relay: Callable[..., Any], provider: TestProvider, db: Engine
) -> None:
    """The provider refusing our client credentials is the operator's problem: a 503 page
    saying so, with the request id and no "start again" link, and the reason and the keys to
    check in the log; no session."""
    with make_relay(provider={"client_secret": "not-what-the-provider-issued"}) as relay:
        params = start_login(relay, provider)
        response = relay.get("/callback?" + urlencode(params))
    assert response.status_code == 503
    assert "misconfigured" in response.text and "tell its operator" in response.text
    assert response.headers["x-request-id"] in response.text
    assert "Start again" not in response.text
    assert session_count(db) == 0


def test_a_retryable_refusal_offers_to_start_again(
    relay: TestClient, provider: TestProvider
) -> None:
    """A refused callback the user can recover from links back to the login."""
    params = start_login(relay, provider)
    params["code"] = "not-a-code"
    response = relay.get("/callback?" + urlencode(params))
    assert response.status_code == 400
    assert '<a href="login">Start again</a>' in response.text


def test_a_login_begun_under_another_secret_is_a_misconfiguration(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """A callback reaching a replica whose session.secret cannot open the pending login (the
    replicas disagree) is a 503 misconfiguration, not a 500."""
    with make_relay() as first:
        params = start_login(first, provider)
        login_cookie = first.cookies["__Host-relay_session_login"]
    other = {"secret": "another-secret-of-more-than-32-characters!!"}
    with make_relay(session=other) as second:
        second.cookies.set("__Host-relay_session_login", login_cookie, domain="relay.test")
        response = second.get("/callback?" + urlencode(params))
    assert response.status_code == 503
    assert "misconfigured" in response.text


def test_every_json_error_has_the_one_shape(make_relay: Any) -> None:
    """Admin API, back-channel logout, /metrics and /auth: a JSON error is always
    {"error", "message", "request_id", ...}, the request id the one in X-Request-Id."""
    with make_relay(peer="203.0.113.9", admin={"token": "t" * 32}) as relay:
        answers = [
            relay.get("/admin/stats"),  # no token: 401
            relay.get("/metrics"),  # not an allowed reader: 404
            relay.post("/backchannel-logout", data={"logout_token": "x"}),  # 400
            relay.get("/auth", headers={"accept": "application/json"}),  # 401
        ]
    for answer in answers:
        body = answer.json()
        assert answer.status_code >= 400, answer
        assert {"error", "message", "request_id"} <= set(body), body
        assert body["message"] and body["request_id"] == answer.headers["x-request-id"], body
