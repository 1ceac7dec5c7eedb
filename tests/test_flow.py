"""The whole login, end to end against the in-process provider, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from relay.crypto import hash_id
from relay.store.models import sessions
from tests.conftest import (
    PUBLIC_URL,
    callback_path,
    provider_redirect,
    query,
    sign_in,
)
from tests.provider import CLIENT_ID, ISSUER, TestProvider

SESSION_COOKIE = "__Host-relay_session"
LOGIN_COOKIE = "__Host-relay_session_login"


def rows(db: Engine, id_hash: str | None = None) -> list[Any]:
    query = select(sessions)
    if id_hash is not None:
        query = query.where(sessions.c.id_hash == id_hash)
    with db.connect() as conn:
        return list(conn.execute(query))


def test_login_redirects_to_provider_with_pkce(relay: TestClient, db: Engine) -> None:
    """/login sends the browser to the authorization endpoint with every code-flow parameter."""
    response = relay.get("/login", params={"rd": "https://app.test/page"})
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(ISSUER + "/authorize?")
    params = query(location)
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == PUBLIC_URL + "/callback"
    assert params["scope"] == "openid email profile"
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
    pending = rows(db)
    assert len(pending) == 1
    assert pending[0].status == "pending"
    assert pending[0].id_hash == hash_id(params["state"])
    assert pending[0].return_to == "https://app.test/page"
    assert LOGIN_COOKIE in relay.cookies


def test_full_login_creates_session(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """A completed login redirects to rd, sets the session cookie, and /auth answers for it."""
    done = sign_in(relay, provider, rd="https://app.test/page?x=1")
    assert done.status_code == 302, done.text
    assert done.headers["location"] == "https://app.test/page?x=1"
    cookie = relay.cookies[SESSION_COOKIE]
    set_cookie = done.headers["set-cookie"].lower()
    for flag in ("httponly", "secure", "samesite=lax", "path=/"):
        assert flag in set_cookie
    assert "domain=" not in set_cookie

    auth = relay.get("/auth")
    assert auth.status_code == 200
    assert auth.headers["x-auth-request-subject"] == "user-1"
    assert auth.headers["x-auth-request-user"] == "alice"
    assert auth.headers["x-auth-request-email"] == "alice@example.com"
    assert auth.headers["x-auth-request-groups"] == "admins,staff"
    info = relay.get("/userinfo").json()
    assert info["sub"] == "user-1" and info["email"] == "alice@example.com"

    [row] = rows(db)
    assert row.status == "active"
    assert row.id_hash == hash_id(cookie)
    assert row.subject == "user-1"
    # The token exchange used client_secret_basic and the PKCE verifier.
    [exchange] = provider.token_requests
    assert exchange["headers"]["authorization"].startswith("Basic ")
    assert 43 <= len(exchange["form"]["code_verifier"]) <= 128


def test_cookie_is_opaque_and_table_holds_no_secrets(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """The cookie is a bare 256-bit id; the row stores its hash and only sealed tokens."""
    sign_in(relay, provider)
    cookie = relay.cookies[SESSION_COOKIE]
    assert len(cookie) == 43 and "." not in cookie  # 32 random bytes, no payload, no signature
    [row] = rows(db)
    assert cookie not in row.id_hash
    exchange = provider.token_requests[0]["form"]
    dump = " ".join(str(v) for v in row)
    assert cookie not in dump
    assert exchange["code"] not in dump and exchange["code_verifier"] not in dump
    for column in ("id_token", "access_token", "refresh_token"):
        value = getattr(row, column)
        assert value and not value.startswith(("eyJ", "at-", "rt-"))
    assert len(provider.issued) == 3  # the ID, access and refresh tokens, none readable
    for token in provider.issued:
        assert token not in dump


def test_pending_login_cannot_be_used_twice(relay: TestClient, provider: TestProvider) -> None:
    """Replaying a callback that already succeeded is refused and creates no session."""
    start = relay.get("/login")
    path = callback_path(provider_redirect(provider, start.headers["location"]))
    assert relay.get(path).status_code == 302
    relay.cookies.delete(SESSION_COOKIE)
    replay = relay.get(path)
    assert replay.status_code == 400
    assert SESSION_COOKIE not in relay.cookies


def test_session_id_is_new_not_the_pending_one(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """No fixation: the session id is fresh, neither the state nor the login cookie."""
    start = relay.get("/login")
    state = query(start.headers["location"])["state"]
    login_cookie = relay.cookies[LOGIN_COOKIE]
    relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
    session_cookie = relay.cookies[SESSION_COOKIE]
    assert session_cookie not in (state, login_cookie)
    assert rows(db, hash_id(state)) == []


def test_session_survives_restart(make_relay: Callable[..., Any], provider: TestProvider) -> None:
    """A new relay process on the same database honours the cookie the old one set."""
    with make_relay() as first:
        sign_in(first, provider)
        cookie = first.cookies[SESSION_COOKIE]
    with make_relay() as second:
        second.cookies.set(SESSION_COOKIE, cookie, domain="relay.test")
        response = second.get("/auth")
    assert response.status_code == 200
    assert response.headers["x-auth-request-subject"] == "user-1"


def test_logout_ends_session(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """POST /logout deletes the row, clears the cookie, and goes to the provider's logout."""
    sign_in(relay, provider)
    response = relay.post("/logout", headers={"Origin": PUBLIC_URL})
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(ISSUER + "/end_session?")
    assert query(location)["post_logout_redirect_uri"] == PUBLIC_URL + "/"
    assert query(location)["id_token_hint"].startswith("eyJ")
    assert rows(db) == []
    assert relay.get("/auth").status_code == 401


def test_expired_session_is_refused_before_pruning(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """Expiry is checked on read: an idle-expired row still in the table gives 401."""
    sign_in(relay, provider)
    clock.advance(86400 + 1)  # idle_timeout default 24h
    assert relay.get("/auth").status_code == 401
    assert len(rows(db)) == 1  # still there: the pruner reclaims it, the read refused it


def test_secret_rotation_keeps_tokens_readable(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """With the old secret in previous_secrets, tokens sealed before a rotation still open
    (the logout's id_token_hint); without it, logout still ends the session."""
    old, new = "old-secret-" + "o" * 32, "new-secret-" + "n" * 32
    with make_relay(session={"secret": old}) as relay:
        sign_in(relay, provider)
        cookie = relay.cookies[SESSION_COOKIE]
    with make_relay(session={"secret": new, "previous_secrets": [old]}) as relay:
        relay.cookies.set(SESSION_COOKIE, cookie, domain="relay.test")
        assert relay.get("/auth").status_code == 200
        response = relay.post("/logout", headers={"Origin": PUBLIC_URL})
        assert query(response.headers["location"])["id_token_hint"].startswith("eyJ")
    with make_relay(session={"secret": old}) as relay:
        sign_in(relay, provider)
        cookie = relay.cookies[SESSION_COOKIE]
    with make_relay(session={"secret": new}) as relay:
        relay.cookies.set(SESSION_COOKIE, cookie, domain="relay.test")
        response = relay.post("/logout", headers={"Origin": PUBLIC_URL})
        assert response.status_code == 303
        assert "id_token_hint" not in query(response.headers["location"])
        assert relay.get("/auth").status_code == 401


def test_an_issuer_ending_in_a_slash_is_kept_exactly(
    make_relay: Any, provider: TestProvider
) -> None:
    """A provider whose issuer ends in "/" (Authentik does) is compared with the configured
    issuer exactly as written: discovery, the iss parameter and the ID token all match."""
    provider.issuer = ISSUER + "/"
    with make_relay(provider={"issuer": ISSUER + "/"}) as relay:
        assert sign_in(relay, provider).status_code == 302
        assert relay.get("/auth").status_code == 200
