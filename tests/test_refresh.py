"""Refreshing a session's access token (relay/refresh.py): when it is due, what is stored, one
refresh per session however many ask, what invalid_grant and an outage do, and what a
refreshed ID token must satisfy (OIDC Core §12.2). The clock is the test's; nothing sleeps."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import Engine, text, update
from starlette.testclient import TestClient

from relay.crypto import Sealer
from relay.store.models import sessions
from tests.conftest import (
    PUBLIC_URL,
    SECRET,
    count_statements,
    log_lines,
    postgres_database,
    run_migrations,
    sign_in,
)
from tests.live import auth, relay_config, replicas, served_provider
from tests.live import sign_in as live_sign_in
from tests.provider import TestProvider

LIFETIME = 3600  # the test provider's expires_in
MARGIN = 60  # [refresh] margin's default
GRACE = 600  # [refresh] outage_grace's default
RETRY = 15  # [refresh] retry_interval's default
COOKIE = "__Host-relay_session"


def row(db: Engine) -> Any:
    with db.connect() as conn:
        return conn.execute(text("SELECT * FROM sessions WHERE status = 'active'")).one_or_none()


def opened(sealed: str | None) -> str | None:
    return Sealer(SECRET).open(sealed)


def counted(relay: TestClient, result: str) -> float:
    registry = relay.app.state.metrics.registry
    return registry.get_sample_value("relay_refresh_total", {"result": result}) or 0.0


def within(seconds: float, check: Callable[[], bool]) -> bool:
    """Whether ``check`` comes true within so many seconds (of real time: the relay's own
    background work, not the test's clock)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def signed_in(relay: TestClient, provider: TestProvider, clock: Any) -> int:
    """Sign in; return when the access token expires."""
    assert sign_in(relay, provider).status_code == 302
    return int(clock()) + LIFETIME


def test_login_stores_when_the_access_token_expires(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """access_expires_at = login time + expires_in; none when the provider does not say."""
    expires = signed_in(relay, provider, clock)
    assert row(db).access_expires_at == expires
    provider.behaviour.expires_in = None
    relay.post("/logout", headers={"Origin": PUBLIC_URL})
    relay.cookies.clear()
    signed_in(relay, provider, clock)
    assert row(db).access_expires_at is None


def test_an_expired_access_token_is_refreshed(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """Past its expiry, the next /auth refreshes it once (RFC 6749 §6 with the client's Basic
    authentication) and stores the new expiry; the checks after that need no refresh."""
    expires = signed_in(relay, provider, clock)
    clock.now = expires + 5
    assert relay.get("/auth").status_code == 200
    [form] = provider.refresh_requests
    assert form["grant_type"] == "refresh_token"
    assert provider.token_requests[-1]["headers"]["authorization"].startswith("Basic ")
    assert row(db).access_expires_at == expires + 5 + LIFETIME
    assert row(db).refresh_lease_until is None
    for _ in range(5):
        assert relay.get("/auth").status_code == 200
    assert len(provider.refresh_requests) == 1
    assert counted(relay, "succeeded") == 1


def test_a_token_within_the_margin_is_refreshed(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """margin seconds before expiry, the check refreshes."""
    expires = signed_in(relay, provider, clock)
    clock.now = expires - MARGIN
    assert relay.get("/auth").status_code == 200
    assert len(provider.refresh_requests) == 1
    assert row(db).access_expires_at == expires - MARGIN + LIFETIME


def test_a_token_before_the_margin_is_not_refreshed(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """One second before the margin, no refresh, and the cache answers on its own."""
    expires = signed_in(relay, provider, clock)
    clock.now = expires - MARGIN - 1
    cache = relay.app.state.relay.sessions.cache
    relay.get("/auth")  # a touch may be due: let it happen
    hits = cache.hits
    assert relay.get("/auth").status_code == 200
    assert cache.hits == hits + 1
    assert provider.refresh_requests == []


def test_rotated_tokens_are_stored_sealed(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """The new access, refresh and ID tokens are in the row sealed, not as they came."""
    clock.now = signed_in(relay, provider, clock)
    assert relay.get("/auth").status_code == 200
    access, refresh, id_token = provider.issued[-3:]
    assert refresh.startswith("rt-") and access.startswith("at-")
    stored = row(db)
    for column, value in (
        ("access_token", access),
        ("refresh_token", refresh),
        ("id_token", id_token),
    ):
        sealed = getattr(stored, column)
        assert value not in sealed, column
        assert opened(sealed) == value, column
    cache = relay.app.state.relay.sessions.cache
    # On PostgreSQL the cache holds nothing while its listener cannot vouch for it (a
    # heartbeat late on a loaded machine): then there is no cached copy to be stale.
    if cache.trusted():
        # No header sends the access token (pass_access_token, set_authorization_header are
        # off): a session in memory does not hold it; it stays sealed in the table.
        assert cache.get(stored.id_hash).session.access_token is None


def test_the_refresh_token_is_kept_when_the_provider_does_not_rotate(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """No refresh_token in the answer: the one stored stays, and works again next time."""
    clock.now = signed_in(relay, provider, clock)
    original = opened(row(db).refresh_token)
    provider.behaviour.rotate_refresh_tokens = False
    assert relay.get("/auth").status_code == 200
    assert opened(row(db).refresh_token) == original
    clock.advance(LIFETIME)
    assert relay.get("/auth").status_code == 200
    assert [f["refresh_token"] for f in provider.refresh_requests] == [original, original]


def test_invalid_grant_ends_the_session(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """RFC 6749 §5.2 invalid_grant (the provider revoked the grant): 401 and the row is gone."""
    clock.now = signed_in(relay, provider, clock)
    provider.revoke_refresh_tokens()
    assert relay.get("/auth").status_code == 401
    assert row(db) is None
    assert relay.get("/auth").status_code == 401
    assert counted(relay, "ended") == 1


@pytest.mark.parametrize(
    "outage",
    [
        {"network_failures": {"/token": "connect"}},
        {"network_failures": {"/token": "timeout"}},
        {"refresh_status": 503},
        {"refresh_status": 500},
    ],
    ids=["unreachable", "timeout", "503", "500"],
)
def test_an_outage_keeps_the_session_within_the_grace_and_503_after(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine, outage: dict[str, Any]
) -> None:
    """With the provider down: 200 until outage_grace past the token's expiry, 503 after (the
    session kept), no new attempt within retry_interval, and a refresh once it is back."""
    expires = signed_in(relay, provider, clock)
    for knob, value in outage.items():
        setattr(provider.behaviour, knob, value)
    clock.now = expires
    assert relay.get("/auth").status_code == 200
    assert counted(relay, "failed") == 1
    for _ in range(5):
        assert relay.get("/auth").status_code == 200
    assert counted(relay, "failed") == 1  # retry_interval: no new attempt yet
    assert row(db).refresh_lease_until == expires + RETRY
    clock.now = expires + GRACE - 1
    assert relay.get("/auth").status_code == 200
    clock.now = expires + GRACE
    assert relay.get("/auth").status_code == 503
    assert row(db) is not None
    assert counted(relay, "failed") == 2  # at expiry, and at GRACE - 1 (the retry was due)
    provider.behaviour.network_failures = {}
    provider.behaviour.refresh_status = 200
    clock.advance(RETRY)
    assert relay.get("/auth").status_code == 200
    assert row(db).access_expires_at == int(clock()) + LIFETIME
    assert counted(relay, "succeeded") == 1


def test_a_refresh_answered_after_the_timeout_is_stored_and_nobody_is_logged_out(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """The provider answers a refresh after longer than provider.timeout, rotating strictly
    (the old refresh token dead the moment the new one is issued): the check that started it
    answers 200 after provider.timeout, the checks meanwhile 200 at once, the answer is stored
    when it comes, and the refreshes after it work: no 401 anywhere."""
    with make_relay(provider={"timeout": "1s"}) as relay:
        expires = signed_in(relay, provider, clock)
        held = asyncio.Event()
        provider.behaviour.refresh_answer = held
        clock.now = expires - MARGIN  # due, and the token it has still works
        statuses = [relay.get("/auth").status_code]
        [sent] = provider.refresh_requests
        rotated = list(provider.refresh_tokens)[-1]
        assert rotated != sent["refresh_token"]  # done at the provider; the answer is held
        for _ in range(5):
            clock.advance(2)
            statuses.append(relay.get("/auth").status_code)
        relay.portal.call(held.set)  # the answer arrives, long after provider.timeout
        arrived = within(5, lambda: opened(row(db).refresh_token) == rotated)
        for _ in range(3):
            clock.advance(RETRY + LIFETIME)
            statuses.append(relay.get("/auth").status_code)
        assert statuses == [200] * len(statuses)
        assert arrived
        assert row(db).access_expires_at == int(clock()) + LIFETIME
        assert opened(row(db).refresh_token) == list(provider.refresh_tokens)[-1]
        assert len(provider.refresh_requests) == 4
        assert counted(relay, "ended") == 0


def test_an_answer_lost_after_the_provider_rotated_ends_the_session_only_after_the_grace(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine, log_stream: io.StringIO
) -> None:
    """The connection drops after the provider rotated the refresh token: the rotated token is
    lost for good. The invalid_grant that follows an attempt whose outcome is unknown is
    ambiguous (refresh.ambiguous): no 401 for it; the session answers 200 on what it has until
    outage_grace past its access token's expiry, and ends at the next invalid_grant then."""
    expires = signed_in(relay, provider, clock)
    provider.behaviour.network_failures = {"/token": "dropped"}
    clock.now = expires
    assert relay.get("/auth").status_code == 200
    assert len(provider.refresh_tokens) == 1 and len(provider.refresh_requests) == 1
    provider.behaviour.network_failures = {}
    statuses = []
    for at in (RETRY, RETRY + 1, GRACE // 2, GRACE - 1):
        clock.now = expires + at
        statuses.append(relay.get("/auth").status_code)
    assert statuses == [200] * 4
    assert len(provider.refresh_requests) == 2  # the ambiguous one, then none until the grace
    clock.now = expires + GRACE
    assert relay.get("/auth").status_code == 401
    assert row(db) is None
    assert len(provider.refresh_requests) == 3
    events = [e for e in log_lines(log_stream) if e["event"].startswith("refresh.")]
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("refresh.failed", "token.unreachable"),
        ("refresh.ambiguous", "token.invalid_grant"),
        ("refresh.failed", "token.invalid_grant"),
    ]
    assert counted(relay, "ambiguous") == 1 and counted(relay, "ended") == 1


def test_a_refresh_another_replica_never_finished_makes_invalid_grant_ambiguous(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """A replica died (or was restarted) with its grant sent and unanswered; its lease runs
    out. The invalid_grant this replica then meets may be that grant's rotation: 200, not 401,
    until outage_grace past the access token's expiry."""
    expires = signed_in(relay, provider, clock)
    with db.begin() as conn:
        conn.execute(update(sessions).values(refresh_lease_until=expires - 1, refresh_unsettled=1))
    relay.app.state.relay.sessions.cache.flush()
    provider.revoke_refresh_tokens()
    clock.now = expires
    assert relay.get("/auth").status_code == 200
    clock.now = expires + GRACE - 1
    assert relay.get("/auth").status_code == 200
    clock.now = expires + GRACE
    assert relay.get("/auth").status_code == 401


def test_concurrent_checks_share_one_refresh(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """Twenty /auth at once for a session whose token expired: one grant at the provider, one
    claim of the row (the others wait on the same refresh in process), and every one of them
    answers 200."""
    clock.now = signed_in(relay, provider, clock)
    provider.behaviour.refresh_delay = 0.05  # in flight while the others come in
    cookie = relay.cookies[COOKIE]

    async def hammer() -> list[int]:
        transport = httpx2.ASGITransport(app=relay.app)
        headers = {"cookie": f"{COOKIE}={cookie}"}
        async with httpx2.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
            answers = await asyncio.gather(
                *(client.get("/auth", headers=headers) for _ in range(20))
            )
        return [answer.status_code for answer in answers]

    engine = relay.app.state.relay.db  # the engine and the hot statements
    with count_statements(engine, "UPDATE") as updates:
        assert relay.portal.call(hammer) == [200] * 20
    assert len(provider.refresh_requests) == 1
    claims = [u for u in updates if "RETURNING" in u.upper()]
    assert len(claims) == 1, updates


def hold_lease(db: Engine, until: int) -> None:
    """Another replica has claimed the refresh until ``until``."""
    with db.begin() as conn:
        conn.execute(update(sessions).values(refresh_lease_until=until))


def test_a_lease_held_elsewhere_is_respected(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """While another replica's lease runs, this one does not refresh: with a token still valid
    it answers at once with that token; with one expired it waits (at most WAIT) for the other
    and answers with what the row holds."""
    expires = signed_in(relay, provider, clock)
    clock.now = expires - 10
    hold_lease(db, expires + 30)
    assert relay.get("/auth").status_code == 200
    assert provider.refresh_requests == []
    clock.now = expires + 1
    assert relay.get("/auth").status_code == 200  # within the grace
    assert provider.refresh_requests == []
    assert row(db).access_expires_at == expires


def test_a_lease_that_ran_out_does_not_block(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """A replica that died holding the lease blocks the others only until it runs out."""
    expires = signed_in(relay, provider, clock)
    hold_lease(db, expires - 1)
    clock.now = expires
    assert relay.get("/auth").status_code == 200
    assert len(provider.refresh_requests) == 1
    assert row(db).refresh_lease_until is None


def test_another_replica_with_an_old_copy_does_not_refresh_again(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """Two relays on one database. B cached the session before A refreshed it; B's next check
    finds the row refreshed and uses it: one grant, and the rotated-away refresh token is
    never sent again (a provider would take that for theft)."""
    # No touch due on B in between: B's copy is not re-read on that account. The access
    # token goes to apps, so a cached session holds it.
    slow = {"touch_interval": "2h"}
    token = {"pass_access_token": True}
    with make_relay(session=slow, headers=token) as a, make_relay(session=slow, headers=token) as b:
        expires = signed_in(a, provider, clock)
        b.cookies.set(COOKIE, a.cookies[COOKIE], domain="relay.test")
        assert b.get("/auth").status_code == 200  # cached on B
        clock.now = expires
        assert a.get("/auth").status_code == 200
        assert b.get("/auth").status_code == 200
        assert len(provider.refresh_requests) == 1
        answer = b.get("/auth")
        assert answer.status_code == 200
        assert answer.headers["x-auth-request-access-token"] == opened(row(db).access_token)
        fresh = b.app.state.relay.sessions.cache.get(row(db).id_hash).session
        assert fresh.access_expires_at == expires + LIFETIME
        assert fresh.access_token == opened(row(db).access_token)


def test_a_refreshed_id_token_updates_the_claims(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """The claims a refresh brings (ID token and userinfo) replace the login's: the headers
    say the new email."""
    clock.now = signed_in(relay, provider, clock)
    provider.profile["email"] = "alice@new.example.com"
    answer = relay.get("/auth")
    assert answer.headers["x-auth-request-email"] == "alice@new.example.com"


def test_a_refreshed_id_token_with_the_original_nonce_is_accepted(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """OIDC Core §12.2: a nonce in a refreshed ID token is fine when it is the login's."""
    clock.now = signed_in(relay, provider, clock)
    [grant] = provider.grants.values()
    provider.behaviour.refresh_id_token_claims = {"nonce": grant.nonce}
    assert relay.get("/auth").status_code == 200
    assert row(db).access_expires_at == int(clock()) + LIFETIME
    clock.advance(LIFETIME)  # and again, once the row holds the refreshed ID token
    assert relay.get("/auth").status_code == 200
    assert row(db).access_expires_at == int(clock()) + LIFETIME


BAD_ID_TOKENS: dict[str, tuple[dict[str, Any] | None, str]] = {
    "another sub": ({"sub": "mallory"}, "id_token.sub_changed"),
    "wrong iss": ({"iss": "https://evil.test"}, "id_token.iss_mismatch"),
    "another nonce": ({"nonce": "not-the-logins"}, "id_token.nonce_mismatch"),
    "another auth_time": ({"auth_time": 1_700_000_999}, "id_token.auth_time_changed"),
    "wrong audience": ({"aud": "someone-else"}, "id_token.aud_mismatch"),
    "bad signature": (None, "id_token.bad_signature"),
}


@pytest.fixture(params=list(BAD_ID_TOKENS))
def bad_id_token(request: pytest.FixtureRequest) -> tuple[dict[str, Any] | None, str]:
    """(claims of a refreshed ID token, or None for a bad signature; the rule it breaks)"""
    return BAD_ID_TOKENS[request.param]


def test_a_refreshed_id_token_that_fails_validation_keeps_the_claims_not_the_old_tokens(
    make_relay: Any,
    provider: TestProvider,
    db: Engine,
    log_stream: io.StringIO,
    bad_id_token: tuple[dict[str, Any] | None, str],
) -> None:
    """OIDC Core §12.2 (same iss and sub, aud with client_id, no nonce or the login's,
    auth_time unchanged) and §3.1.3.7: a refreshed ID token failing any is not stored and its
    claims are not used, counted as rejected and logged with its rule. The tokens the token
    endpoint answered with are stored all the same: the provider has rotated the refresh
    token, and sending the old one again would end the grant. An ID token naming another
    user ends the session: a refresh never changes who is signed in."""
    claims, reason = bad_id_token
    clock = provider.clock  # the test's FakeClock
    provider.behaviour.id_token_claims = {"auth_time": 1_700_000_000}
    with make_relay() as relay:
        clock.now = signed_in(relay, provider, clock)
        before = row(db)
        if claims is None:
            provider.behaviour.signing_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
        else:
            provider.behaviour.refresh_id_token_claims = claims
        if reason == "id_token.sub_changed":
            assert relay.get("/auth").status_code == 401
            assert row(db) is None
            assert counted(relay, "ended") == 1
        else:
            assert relay.get("/auth").status_code == 200
            after = row(db)
            for column in ("claims", "id_token"):
                assert getattr(after, column) == getattr(before, column), column
            for column in ("access_token", "refresh_token", "access_expires_at"):
                assert getattr(after, column) != getattr(before, column), column
            assert opened(after.refresh_token) == list(provider.refresh_tokens)[-1]
            assert json.loads(after.claims)["sub"] == "user-1"
            assert counted(relay, "rejected") == 1
            assert counted(relay, "succeeded") == 0
    [failed] = [e for e in log_lines(log_stream) if e["event"] == "refresh.failed"]
    assert failed["reason"] == reason


def test_a_rotated_refresh_token_is_kept_when_userinfo_fails(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """The token endpoint rotated the refresh token, then userinfo timed out: the new refresh
    token is stored (the old one is dead at the provider), so the next refresh works instead
    of meeting invalid_grant and logging the user out."""
    signed_in(relay, provider, clock)
    clock.advance(LIFETIME)
    provider.behaviour.network_failures = {"/userinfo": "timeout"}
    assert relay.get("/auth").status_code == 200
    assert opened(row(db).refresh_token) == list(provider.refresh_tokens)[-1]
    provider.behaviour.network_failures = {}
    clock.advance(LIFETIME)
    assert relay.get("/auth").status_code == 200
    assert row(db) is not None
    assert counted(relay, "ended") == 0


def test_an_unreadable_refresh_token_is_dropped_not_a_503(
    relay: TestClient, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """A refresh token sealed under a secret no longer configured can never be sent: the
    session goes on without refreshes (200 past the outage grace), not into 503s."""
    signed_in(relay, provider, clock)
    other = Sealer("a-secret-nobody-configured-0123456789abcdef")
    with db.begin() as conn:
        conn.execute(update(sessions).values(refresh_token=other.seal("rt-x")))
    relay.app.state.relay.sessions.cache.flush()
    clock.advance(LIFETIME + GRACE)
    answers = []
    for _ in range(3):
        answers.append(relay.get("/auth").status_code)
        clock.advance(LIFETIME)
    assert answers == [200, 200, 200]
    assert row(db).refresh_token is None


def test_refresh_can_be_turned_off(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """[refresh] enabled = false: an expired access token is left as it is."""
    with make_relay(refresh={"enabled": False}) as relay:
        clock.now = signed_in(relay, provider, clock) + GRACE + 1
        assert relay.get("/auth").status_code == 200
    assert provider.refresh_requests == []


def test_refresh_logs_every_outcome_and_never_a_token(
    make_relay: Any, provider: TestProvider, clock: Any, log_stream: io.StringIO
) -> None:
    """Success, an outage and invalid_grant each leave a refresh.* line naming the session by
    its short hash; no token the provider issued, nor a sealed value, reaches the log."""
    with make_relay() as relay:
        clock.now = signed_in(relay, provider, clock)
        assert relay.get("/auth").status_code == 200
        clock.advance(LIFETIME)
        provider.behaviour.refresh_status = 502
        assert relay.get("/auth").status_code == 200
        provider.behaviour.refresh_status = 200
        provider.revoke_refresh_tokens()
        clock.advance(RETRY)
        assert relay.get("/auth").status_code == 401
    output = log_stream.getvalue()
    assert len(provider.issued) >= 6
    for token in provider.issued:
        assert token not in output
    assert "eyJ" not in output and "gAAAAA" not in output
    events = [e for e in log_lines(log_stream) if e["event"].startswith("refresh.")]
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("refresh.succeeded", None),
        ("refresh.failed", "token.status_502"),
        ("refresh.failed", "token.invalid_grant"),
    ]
    assert all(len(e["session"]) == 12 for e in events)


@pytest.mark.postgres
def test_two_replicas_hammered_for_one_expired_session_make_one_grant(tmp_path: Path) -> None:
    """Two `relay serve` processes on one PostgreSQL, asked at once and many times over for
    one session whose access token has expired: exactly one refresh grant reaches the
    provider (the lease), and every check answers 200 (the loser waits for the winner)."""
    with postgres_database() as url, served_provider() as provider:
        run_migrations(url)
        extra = "[refresh]\nmargin = 0\n"
        config_a, a = relay_config(tmp_path, "a", url, issuer=provider.issuer, extra=extra)
        config_b, b = relay_config(tmp_path, "b", url, issuer=provider.issuer, extra=extra)
        with replicas(config_a, config_b):
            provider.behaviour.expires_in = 0  # expired as soon as it is issued
            cookie = live_sign_in(a, provider, "alice", "op-1")
            provider.behaviour.expires_in = LIFETIME
            provider.behaviour.refresh_delay = 0.3  # in flight while the others ask
            bases = [a, b] * 24
            with httpx2.Client(timeout=10) as http, ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda base: auth(http, base, cookie), bases))
            assert statuses == [200] * len(bases)
            assert len(provider.refresh_requests) == 1


@pytest.mark.parametrize("name", ["access_token", "refresh_token", "id_token"])
@pytest.mark.parametrize(
    "value",
    ["at-\u00e9t\u00e9", "at-1\r\nX-Injected: yes", "at-1\x00"],
    ids=["non-ascii", "crlf", "nul"],
)
def test_a_refresh_answer_with_a_mangled_token_is_a_provider_failure(
    relay: TestClient,
    provider: TestProvider,
    *,
    clock: Any,
    db: Engine,
    log_stream: io.StringIO,
    name: str,
    value: str,
) -> None:
    """A token outside VSCHAR in a refresh answer is the provider failing, like a 5xx: the
    session and its tokens are kept (200 within the grace), the failure logged with its
    reason and counted, nothing of the answer stored; a good answer later refreshes. (A
    provider that rotated the refresh token in the mangled answer has spent the old one:
    that grant then ends at the next refresh, as after any answer lost on the way.)"""
    provider.behaviour.rotate_refresh_tokens = False
    expires = signed_in(relay, provider, clock)
    before = row(db)
    provider.behaviour.token_overrides[name] = value
    clock.now = expires
    assert relay.get("/auth").status_code == 200
    failed = [e for e in log_lines(log_stream) if e["event"] == "refresh.failed"]
    assert failed[-1]["reason"] == f"token.malformed_{name}"
    assert counted(relay, "failed") == 1
    after = row(db)
    assert (after.access_token, after.refresh_token, after.id_token) == (
        before.access_token,
        before.refresh_token,
        before.id_token,
    )
    provider.behaviour.token_overrides.clear()
    clock.advance(RETRY)
    assert relay.get("/auth").status_code == 200
    assert counted(relay, "succeeded") == 1
