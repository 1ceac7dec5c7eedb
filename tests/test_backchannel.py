"""POST /backchannel-logout, from OpenID Connect Back-Channel Logout 1.0 §2.4-2.8."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from relay.crypto import hash_id
from relay.store.database import Database, make_engine
from relay.store.prune import prune
from tests.conftest import log_lines, sign_in
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
    body = response.json()
    assert (body["error"], body["error_description"]) == ("invalid_request", reason)
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


# Replay and age: §2.4 makes jti REQUIRED, §2.6 (3) leaves "recent" to the receiver, and
# §2.6 (7)'s replay check needs each accepted jti remembered while the token could pass.
MAX_AGE, SKEW = 300, 60  # provider.logout_token_max_age's and provider.clock_skew's defaults


def used_jtis(db: Engine) -> list[tuple[str, int]]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT jti_hash, expires_at FROM logout_tokens"))
        return [(r.jti_hash, r.expires_at) for r in rows]


def test_a_logout_token_without_jti_is_refused(
    three_sessions: TestClient, provider: TestProvider, db: Engine
) -> None:
    """No jti (§2.4: REQUIRED): 400 logout_token.no_jti, nothing ends, nothing remembered."""
    provider.subject = "alice"
    response = post(three_sessions, provider.logout_token(drop=("jti",)))
    assert response.status_code == 400
    assert response.json()["error_description"] == "logout_token.no_jti"
    assert len(active(db)) == 3
    assert used_jtis(db) == []


def test_a_replayed_logout_token_is_refused(
    three_sessions: TestClient, provider: TestProvider, db: Engine, log_stream: Any
) -> None:
    """The same token twice: 200, then 400 logout_token.replayed, and the replay does not end
    the session the user signed in to since."""
    provider.subject, provider.sid = "alice", "s1"
    token = provider.logout_token()
    assert post(three_sessions, token).status_code == 200
    assert active(db) == [("alice", "s2"), ("bob", "s3")]
    provider.subject, provider.sid = "alice", "s1"
    sign_in(three_sessions, provider)  # alice back in provider session s1
    three_sessions.cookies.clear()
    response = post(three_sessions, token)
    assert response.status_code == 400
    assert response.json()["error_description"] == "logout_token.replayed"
    assert active(db) == [("alice", "s1"), ("alice", "s2"), ("bob", "s3")]
    refusals = [e for e in log_lines(log_stream) if e["event"] == "backchannel_logout.refused"]
    assert [e["reason"] for e in refusals] == ["logout_token.replayed"]


def test_a_logout_token_replayed_at_another_relay_is_refused(
    make_relay: Any, provider: TestProvider, db: Engine
) -> None:
    """Two relays on one database (replicas): a token one accepted, the other refuses."""
    with make_relay() as first, make_relay() as second:
        provider.subject, provider.sid = "alice", "s1"
        sign_in(first, provider)
        token = provider.logout_token()
        assert post(first, token).status_code == 200
        assert active(db) == []
        sign_in(second, provider)  # alice again, in the same provider session
        response = post(second, token)
        assert response.status_code == 400
        assert response.json()["error_description"] == "logout_token.replayed"
        assert active(db) == [("alice", "s1")]


def test_a_jti_is_remembered_by_its_hash_until_the_token_could_not_pass(
    three_sessions: TestClient, provider: TestProvider, db: Engine, clock: Any
) -> None:
    """The row holds the jti's SHA-256 and keeps it until iat + max_age + skew has passed."""
    provider.subject = "bob"
    token = provider.logout_token(jti="jti-of-this-token", iat=int(clock()) - 10)
    assert post(three_sessions, token).status_code == 200
    assert used_jtis(db) == [(hash_id("jti-of-this-token"), int(clock()) - 10 + MAX_AGE + SKEW + 1)]


@pytest.mark.parametrize(
    "case",
    [
        (MAX_AGE + SKEW, {}, 200),
        (MAX_AGE + SKEW + 1, {}, 400),
        (600 + SKEW, {"logout_token_max_age": "10m"}, 200),
        (600 + SKEW + 1, {"logout_token_max_age": "10m"}, 400),
        (MAX_AGE + 1, {"clock_skew": "1s"}, 200),
        (MAX_AGE + 2, {"clock_skew": "1s"}, 400),
    ],
    ids=["at-max-age", "past-max-age", "at-10m", "past-10m", "at-small-skew", "past-small-skew"],
)
def test_logout_tokens_older_than_the_max_age_are_refused(
    make_relay: Any,
    provider: TestProvider,
    db: Engine,
    clock: Any,
    case: tuple[int, dict[str, str], int],
) -> None:
    """A token whose iat is more than provider.logout_token_max_age + clock_skew ago is
    refused (logout_token.too_old) and ends nothing; one just within is accepted."""
    age, config, status = case
    with make_relay(provider=config) as relay:
        provider.subject, provider.sid = "alice", "s1"
        sign_in(relay, provider)
        now = int(clock())
        response = post(relay, provider.logout_token(iat=now - age, exp=now + 60))
        assert response.status_code == status
        if status == 400:
            assert response.json()["error_description"] == "logout_token.too_old"
            assert active(db) == [("alice", "s1")]
        else:
            assert active(db) == []


def test_used_jtis_are_pruned_once_their_token_could_not_pass(
    three_sessions: TestClient, provider: TestProvider, database_url: str, db: Engine, clock: Any
) -> None:
    """The pruner keeps a used jti while its token could still pass the age check, deletes
    it after; the token, still unexpired by exp, is then refused as too old."""
    provider.subject = "bob"
    issued = int(clock())
    token = provider.logout_token(exp=issued + 10 * MAX_AGE)
    assert post(three_sessions, token).status_code == 200
    last_acceptable = issued + MAX_AGE + SKEW
    run_prune(database_url, last_acceptable)
    assert len(used_jtis(db)) == 1
    run_prune(database_url, last_acceptable + 1)
    assert used_jtis(db) == []
    clock.advance(MAX_AGE + SKEW + 1)
    response = post(three_sessions, token)
    assert response.json()["error_description"] == "logout_token.too_old"


def run_prune(database_url: str, now: int) -> None:
    async def go() -> None:
        database = Database(make_engine(database_url), timeout=2)
        try:
            await prune(database, now, batch_size=100)
        finally:
            await database.dispose()

    asyncio.run(go())
