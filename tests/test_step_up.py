"""Step-up (relay/step_up.py): /auth?acr=... and ?max_age=... refuse a session whose sign-in
falls short with a 401, the login that follows asks the provider for exactly that (OIDC Core
3.1.2.1 acr_values, max_age), the callback holds the ID token to it (3.1.3.7 (12), (13)), and
the new session replaces the browser's old one. A bearer token that falls short gets RFC
9470's challenge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import (
    FakeClock,
    callback_path,
    provider_redirect,
    query,
    sign_in,
    touches_written,
)
from tests.provider import TestProvider
from tests.test_bearer import BEARER, auth

Start = Callable[..., Any]


def signed_in_with(client: TestClient, provider: TestProvider, **claims: Any) -> None:
    provider.behaviour.id_token_claims = claims
    assert sign_in(client, provider).status_code == 302


def status(client: TestClient, path: str) -> int:
    code: int = client.get(path).status_code
    touches_written(client)
    return code


def active_sessions(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT acr, subject FROM sessions WHERE status = 'active'"))
        return [dict(row._mapping) for row in rows]


def test_a_session_without_the_acr_gets_401_and_one_with_it_passes(
    relay: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """acr must be one of the comma-separated values; every other route still passes."""
    signed_in_with(relay, provider, acr="urn:pwd", auth_time=int(clock()))
    assert status(relay, "/auth") == 200
    assert status(relay, "/auth?acr=urn:mfa") == 401
    assert status(relay, "/auth?acr=urn:mfa,urn:pwd") == 200
    signed_in_with(relay, provider, acr="urn:mfa", auth_time=int(clock()))
    assert status(relay, "/auth?acr=urn:mfa") == 200


def test_max_age_holds_for_that_long_after_the_sign_in(
    relay: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """max_age=300: auth_time within 300 s (plus the 60 s skew) passes, then the same
    session is refused, on the cached path as on the first check."""
    signed_in_with(relay, provider, auth_time=int(clock()))
    assert status(relay, "/auth?max_age=300") == 200
    assert status(relay, "/auth?max_age=300") == 200
    clock.advance(300 + 60 + 1)
    assert status(relay, "/auth?max_age=300") == 401
    assert status(relay, "/auth") == 200


def test_max_age_refuses_a_session_without_auth_time(
    relay: TestClient, provider: TestProvider
) -> None:
    """No auth_time: how long ago the person signed in is unknown, so no max_age is met."""
    signed_in_with(relay, provider)
    assert status(relay, "/auth?max_age=86400") == 401


@pytest.mark.parametrize("rule", ["acr=", "max_age=soon", "max_age=-1", "acr=a&acr=b"])
def test_a_step_up_the_relay_cannot_read_is_a_403_not_a_pass(
    relay: TestClient, provider: TestProvider, clock: FakeClock, rule: str
) -> None:
    """A route's step-up that does not read refuses everyone (no login could satisfy it),
    rather than passing as though it asked for nothing."""
    signed_in_with(relay, provider, acr="urn:mfa", auth_time=int(clock()))
    assert status(relay, "/auth?" + rule) == 403


def test_auth_redirect_sends_the_browser_to_a_login_that_asks_for_it(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """Caddy's flavour: the login URL carries the route's acr and max_age, beside the page
    to return to (which a trusted proxy names)."""
    with make_relay(peer="127.0.0.1") as client:
        signed_in_with(client, provider, acr="urn:pwd", auth_time=int(clock()))
        response = client.get(
            "/auth/redirect?allowed_groups=admins&acr=urn:mfa&max_age=600",
            headers={
                "Accept": "text/html",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "app.test",
                "X-Forwarded-Uri": "/admin/keys",
            },
        )
    assert response.status_code == 302
    login = urlsplit(response.headers["location"])
    assert login.path == "/login"
    assert query(response.headers["location"]) == {
        "rd": "https://app.test/admin/keys",
        "acr": "urn:mfa",
        "max_age": "600",
    }


def test_the_step_up_login_asks_for_it_and_upgrades_the_session(
    relay: TestClient, provider: TestProvider, clock: FakeClock, db: Engine
) -> None:
    """/login?acr=urn:mfa&max_age=600 asks the provider for acr_values and max_age; an ID
    token with acr urn:mfa and a fresh auth_time gives a session that passes the route, and
    the browser's old session is gone: one session, upgraded."""
    signed_in_with(relay, provider, acr="urn:pwd", auth_time=int(clock()) - 3600)
    start = relay.get("/login", params={"rd": "/", "acr": "urn:mfa", "max_age": "600"})
    params = query(start.headers["location"])
    assert params["acr_values"] == "urn:mfa" and params["max_age"] == "600"
    provider.behaviour.id_token_claims = {"acr": "urn:mfa", "auth_time": int(clock())}
    done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.status_code == 302
    assert status(relay, "/auth?acr=urn:mfa&max_age=600") == 200
    assert active_sessions(db) == [{"acr": "urn:mfa", "subject": provider.subject}]


def test_the_callback_refuses_an_id_token_without_the_asked_acr(
    relay: TestClient, provider: TestProvider, clock: FakeClock, db: Engine
) -> None:
    """3.1.3.7 (12): the provider answered with another acr than the step-up asked for: no
    new session, and the old one is left as it was."""
    signed_in_with(relay, provider, acr="urn:pwd", auth_time=int(clock()))
    start = relay.get("/login", params={"rd": "/", "acr": "urn:mfa"})
    done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.status_code == 400
    assert active_sessions(db) == [{"acr": "urn:pwd", "subject": provider.subject}]
    assert status(relay, "/auth") == 200


def test_the_callback_refuses_an_authentication_older_than_the_asked_max_age(
    relay: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """3.1.3.7 (13): a step-up's max_age, as the config's, bounds auth_time."""
    provider.behaviour.id_token_claims = {"auth_time": int(clock()) - 3600}
    start = relay.get("/login", params={"rd": "/", "max_age": "600"})
    done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    assert done.status_code == 400


def test_any_new_login_replaces_the_browsers_old_session(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """The cookie can name one session: the one it named before is ended, not left to idle
    out as a ghost on the person's sessions page."""
    signed_in_with(relay, provider)
    signed_in_with(relay, provider)
    assert len(active_sessions(db)) == 1


def test_a_bearer_token_that_falls_short_gets_the_rfc_9470_challenge(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """insufficient_user_authentication, with the acr_values and max_age that would do."""
    with make_relay(bearer=BEARER) as client:
        token = provider.access_token(acr="urn:pwd", auth_time=int(clock()))
        response = auth(client, token, "/auth?acr=urn:mfa,urn:hw&max_age=300")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == (
            'Bearer error="insufficient_user_authentication", acr_values="urn:mfa urn:hw", '
            'max_age="300"'
        )
        strong = provider.access_token(acr="urn:mfa", auth_time=int(clock()))
        assert auth(client, strong, "/auth?acr=urn:mfa,urn:hw&max_age=300").status_code == 200
