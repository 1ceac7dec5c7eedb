"""oauth2-proxy's endpoint names (/start, /sign_in, /sign_out) and its X-Auth-Request-Redirect
header, for proxy configs written for oauth2-proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from tests.conftest import (
    PUBLIC_URL,
    callback_path,
    provider_redirect,
    query,
    sign_in,
)
from tests.provider import ISSUER, TestProvider
from tests.test_routes import session_count

TRUSTED = "127.0.0.1"


def return_url(relay: TestClient, provider: TestProvider, path: str, **kwargs: Any) -> str:
    """Start a login at ``path``, play the provider, and say where /callback sends the browser."""
    start = relay.get(path, **kwargs)
    assert start.status_code == 302, start.text
    done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.status_code == 302, done.text
    return str(done.headers["location"])


# -- /start and /sign_in --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/start", "/sign_in"])
def test_start_and_sign_in_are_login(
    relay: TestClient, provider: TestProvider, path: str, db: Engine
) -> None:
    """/start and /sign_in go straight to the provider like /login and honour rd."""
    start = relay.get(path, params={"rd": "https://app.test/reports?a=1"})
    assert start.headers["location"].startswith(ISSUER + "/authorize?")
    assert query(start.headers["location"])["redirect_uri"] == PUBLIC_URL + "/callback"
    done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.headers["location"] == "https://app.test/reports?a=1"
    assert session_count(db) == 1


@pytest.mark.parametrize("path", ["/start", "/sign_in"])
def test_start_and_sign_in_refuse_a_foreign_rd(
    relay: TestClient, provider: TestProvider, path: str
) -> None:
    """An rd off the allow-list falls back to the default URL, as at /login."""
    assert return_url(relay, provider, path, params={"rd": "https://evil.example/"}) == (
        PUBLIC_URL + "/"
    )


# -- X-Auth-Request-Redirect ----------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["https://app.test/reports?a=1&b=2", "/reports?a=1&b=2"], ids=["url", "path"]
)
def test_auth_request_redirect_from_trusted_proxy_is_the_return_url(
    make_relay: Callable[..., Any], provider: TestProvider, header: str
) -> None:
    """Without rd, a trusted proxy's X-Auth-Request-Redirect names the page to return to: a
    URL, or a path on the host (outside the relay's own path)."""
    with make_relay(peer=TRUSTED, server={"public_url": PUBLIC_URL + "/oauth2"}) as relay:
        url = return_url(
            relay, provider, "/oauth2/start", headers={"X-Auth-Request-Redirect": header}
        )
    assert url == header


def test_auth_request_redirect_from_untrusted_peer_is_ignored(
    relay: TestClient, provider: TestProvider
) -> None:
    """From a peer that is not a trusted proxy the header steers nothing."""
    headers = {"X-Auth-Request-Redirect": "https://app.test/reports"}
    assert return_url(relay, provider, "/start", headers=headers) == PUBLIC_URL + "/"


def test_auth_request_redirect_to_a_refused_host_falls_back(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """The header passes the same allow-list as rd: another host gives the default URL."""
    headers = {"X-Auth-Request-Redirect": "https://evil.example/phish"}
    with make_relay(peer=TRUSTED) as relay:
        assert return_url(relay, provider, "/start", headers=headers) == PUBLIC_URL + "/"


def test_rd_beats_auth_request_redirect_which_beats_forwarded(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """rd first, then X-Auth-Request-Redirect, then X-Forwarded-*: oauth2-proxy's order."""
    headers = {
        "X-Auth-Request-Redirect": "https://app.test/from-header",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.test",
        "X-Forwarded-Uri": "/from-forwarded",
    }
    with make_relay(peer=TRUSTED) as relay:
        rd = {"rd": "https://app.test/from-rd"}
        assert return_url(relay, provider, "/start", params=rd, headers=headers) == (
            "https://app.test/from-rd"
        )
        assert return_url(relay, provider, "/start", headers=headers) == (
            "https://app.test/from-header"
        )


@pytest.mark.parametrize("header", ["/oauth2/start", "/oauth2", PUBLIC_URL + "/oauth2/sign_in"])
def test_auth_request_redirect_into_the_relay_is_skipped(
    make_relay: Callable[..., Any], provider: TestProvider, header: str
) -> None:
    """oauth2-proxy's nginx example sets the header to $request_uri on every /oauth2/ request,
    so it often names /oauth2/start itself: never a return target; X-Forwarded-* still count."""
    headers = {
        "X-Auth-Request-Redirect": header,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.test",
        "X-Forwarded-Uri": "/from-forwarded",
    }
    with make_relay(peer=TRUSTED, server={"public_url": PUBLIC_URL + "/oauth2"}) as relay:
        url = return_url(relay, provider, "/oauth2/start", headers=headers)
        assert url == "https://app.test/from-forwarded"
        headers = {"X-Auth-Request-Redirect": header}
        url = return_url(relay, provider, "/oauth2/start", headers=headers)
        assert url == PUBLIC_URL + "/oauth2/"


def test_auth_request_redirect_path_with_relay_at_the_root_is_skipped(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """With the relay at the root of its host, every path on that host is the relay's."""
    with make_relay(peer=TRUSTED) as relay:
        headers = {"X-Auth-Request-Redirect": "/reports"}
        assert return_url(relay, provider, "/start", headers=headers) == PUBLIC_URL + "/"


# -- /sign_out ------------------------------------------------------------------------------


def test_sign_out_get_only_asks(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """GET /sign_out (oauth2-proxy signs out on GET) shows the confirmation page; the session
    stays."""
    sign_in(relay, provider)
    response = relay.get("/sign_out")
    assert response.status_code == 200
    assert 'method=post action="https://relay.test/sign_out"' in response.text
    assert session_count(db) == 1
    assert relay.get("/auth").status_code == 200


def test_sign_out_page_carries_an_allowed_rd(relay: TestClient) -> None:
    """An allowed rd rides along in the form's action, and CSP form-action lets the browser
    follow the redirect there."""
    response = relay.get("/sign_out", params={"rd": "https://app.test/bye"})
    assert 'action="https://relay.test/sign_out?rd=https%3A%2F%2Fapp.test%2Fbye"' in response.text
    assert "https://app.test" in response.headers["content-security-policy"]


def test_sign_out_page_drops_a_refused_rd(relay: TestClient) -> None:
    """A refused rd does not reach the form or the CSP."""
    response = relay.get("/sign_out", params={"rd": "https://evil.example/"})
    assert 'action="https://relay.test/sign_out"' in response.text
    assert "evil" not in response.text
    assert "evil" not in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}],
    ids=["other-origin", "cross-site", "none"],
)
def test_cross_origin_sign_out_is_403(
    relay: TestClient, provider: TestProvider, headers: dict[str, str], db: Engine
) -> None:
    """POST /sign_out has /logout's Origin check: from another site it is refused."""
    sign_in(relay, provider)
    response = relay.post("/sign_out", params={"rd": "https://app.test/"}, headers=headers)
    assert response.status_code == 403
    assert session_count(db) == 1


def test_sign_out_without_rd_is_logout(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """Without rd, POST /sign_out is POST /logout: the provider's end-session comes next."""
    sign_in(relay, provider)
    response = relay.post("/sign_out", headers={"Origin": PUBLIC_URL})
    assert response.status_code == 303
    assert response.headers["location"].startswith(ISSUER + "/end_session?")
    assert session_count(db) == 0
    assert relay.get("/auth").status_code == 401


@pytest.mark.parametrize("rd", ["https://app.test/bye", "/bye"])
def test_sign_out_goes_to_an_allowed_rd(
    relay: TestClient, provider: TestProvider, db: Engine, rd: str
) -> None:
    """An rd on the allow-list is where the browser goes after the session ends."""
    sign_in(relay, provider)
    response = relay.post("/sign_out", params={"rd": rd}, headers={"Origin": PUBLIC_URL})
    assert response.status_code == 303
    assert response.headers["location"] == rd
    assert session_count(db) == 0
    assert "relay_session=" in response.headers["set-cookie"]


@pytest.mark.parametrize("rd", ["https://evil.example/", "//evil.example/", "javascript:alert(1)"])
def test_sign_out_ignores_a_refused_rd(
    relay: TestClient, provider: TestProvider, db: Engine, rd: str
) -> None:
    """An rd off the allow-list is dropped: the session still ends, and the browser goes where
    /logout would send it."""
    sign_in(relay, provider)
    response = relay.post("/sign_out", params={"rd": rd}, headers={"Origin": PUBLIC_URL})
    assert response.status_code == 303
    assert response.headers["location"].startswith(ISSUER + "/end_session?")
    assert session_count(db) == 0


def test_aliases_live_under_the_public_path(make_relay: Callable[..., Any]) -> None:
    """With public_url ending in /oauth2, the aliases are /oauth2/start, /oauth2/sign_in and
    /oauth2/sign_out, next to /oauth2/auth and /oauth2/callback."""
    with make_relay(server={"public_url": PUBLIC_URL + "/oauth2"}) as relay:
        assert relay.get("/oauth2/start").status_code == 302
        assert relay.get("/oauth2/sign_in").status_code == 302
        assert relay.get("/oauth2/sign_out").status_code == 200
        assert relay.get("/start").status_code == 404
