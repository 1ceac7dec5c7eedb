"""POST /backchannel-logout, from OpenID Connect Back-Channel Logout 1.0 §2.4-2.8."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import sign_in
from tests.provider import TestProvider


def active(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT subject, sid FROM sessions WHERE status = 'active' ORDER BY sid")
        )
        return [(r.subject, r.sid) for r in rows]


def post(relay: TestClient, token: str | None) -> Any:
    data = {} if token is None else {"logout_token": token}
    return relay.post("/backchannel-logout", data=data)


@pytest.fixture
def three_sessions(make_relay: Any, provider: TestProvider) -> Any:
    """alice in provider sessions s1 and s2, bob in s3."""
    with make_relay() as relay:
        for subject, sid in (("alice", "s1"), ("alice", "s2"), ("bob", "s3")):
            provider.subject, provider.sid = subject, sid
            relay.cookies.clear()
            sign_in(relay, provider)
        relay.cookies.clear()
        yield relay


def test_logout_by_sid_ends_that_session_only(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A token with sub and sid ends the relay sessions of that provider session (§2.7)."""
    provider.subject, provider.sid = "alice", "s1"
    response = post(three_sessions, provider.logout_token())
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert active(db) == [("alice", "s2"), ("bob", "s3")]


def test_logout_by_sub_ends_all_of_the_users_sessions(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A token with sub and no sid ends every session of that user."""
    provider.subject = "alice"
    assert post(three_sessions, provider.logout_token(drop=("sid",))).status_code == 200
    assert active(db) == [("bob", "s3")]


def test_logout_by_sid_alone(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A token with sid and no sub ends that provider session's relay sessions."""
    provider.sid = "s3"
    assert post(three_sessions, provider.logout_token(drop=("sub",))).status_code == 200
    assert active(db) == [("alice", "s1"), ("alice", "s2")]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"drop": ("sub", "sid")}, "logout_token.no_sub_or_sid"),
        ({"drop": ("events",)}, "logout_token.bad_events"),
        (
            {"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}},
            "logout_token.bad_events",
        ),
        ({"events": {"http://example.com/other-event": {}}}, "logout_token.bad_events"),
        ({"nonce": "n"}, "logout_token.has_nonce"),
        ({"aud": "another-client"}, "logout_token.aud_mismatch"),
        ({"iss": "https://other-idp.test"}, "logout_token.iss_mismatch"),
        ({"drop": ("iat",)}, "logout_token.bad_iat"),
        ({"exp": 1}, "logout_token.expired"),
    ],
    ids=[
        "no-sub-or-sid",
        "no-events",
        "event-not-object",
        "other-event",
        "nonce",
        "wrong-aud",
        "wrong-iss",
        "no-iat",
        "expired",
    ],
)
def test_invalid_logout_tokens_are_refused(
    three_sessions: TestClient,
    provider: TestProvider,
    db: Engine,
    change: dict[str, Any],
    reason: str,
) -> None:
    """Each rule of §2.6 refuses the token with a 400 and ends nothing (§2.8)."""
    claims = dict(change)  # the parameter is shared between the database runs
    drop = claims.pop("drop", ())
    response = post(three_sessions, provider.logout_token(drop=drop, **claims))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": reason}
    assert len(active(db)) == 3


def test_logout_token_with_bad_signature_is_refused(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A logout token not signed by the provider's key is refused (§2.6 (2))."""
    provider.behaviour.signing_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    response = post(three_sessions, provider.logout_token())
    assert response.json()["error_description"] == "logout_token.bad_signature"
    assert len(active(db)) == 3


def test_an_id_token_is_not_a_logout_token(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """An ID token (it has a nonce and no events) cannot end sessions."""
    response = post(three_sessions, provider.id_token("n", "alice"))
    assert response.status_code == 400
    assert len(active(db)) == 3


@pytest.mark.parametrize("token", [None, "", "not.a.jwt", "a" * 70_000])
def test_missing_or_garbage_logout_token(three_sessions: TestClient, token: str | None) -> None:
    """No token, an empty one, nonsense, or an oversized body: 4xx, nothing ends."""
    assert post(three_sessions, token).status_code in (400, 413)
