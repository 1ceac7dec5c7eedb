"""Ending the provider's grant with the session (RFC 7009): a sign-out, "sign out everywhere
else" and an operator's revocation revoke the ended sessions' refresh tokens at the provider's
revocation endpoint; a provider that cannot be reached never stops the sign-out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import PUBLIC_URL, log_lines
from tests.provider import TestProvider
from tests.test_admin import TOKEN, bearer, signed_in
from tests.test_own_sessions import SAME_ORIGIN, as_

Start = Callable[..., Any]


def live_refresh_tokens(provider: TestProvider, subject: str) -> set[str]:
    return {t for t, grant in provider.refresh_tokens.items() if grant.subject == subject}


def test_a_sign_out_revokes_the_sessions_refresh_token(
    relay: TestClient, provider: TestProvider
) -> None:
    """§2.1: the token, hinted as a refresh token, the client authenticated; afterwards the
    provider no longer knows the grant."""
    cookie = signed_in(relay, provider, "user-1", "alice@example.com")
    (token,) = live_refresh_tokens(provider, "user-1")
    response = as_(relay, cookie).post("/logout", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert provider.revoked == [{"token": token, "token_type_hint": "refresh_token"}]
    assert live_refresh_tokens(provider, "user-1") == set()


def test_sign_out_everywhere_else_revokes_the_others_only(
    relay: TestClient, provider: TestProvider
) -> None:
    """The session that asked keeps its grant; the others' end with theirs."""
    first = signed_in(relay, provider, "user-1", "alice@example.com")
    before = live_refresh_tokens(provider, "user-1")
    second = signed_in(relay, provider, "user-1", "alice@example.com")
    (kept,) = live_refresh_tokens(provider, "user-1") - before
    response = as_(relay, second).post("/sessions/end-others", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert [form["token"] for form in provider.revoked] == list(before)
    assert live_refresh_tokens(provider, "user-1") == {kept}
    assert first  # its session ended; its grant with it


def test_an_operators_revocation_revokes_every_grant_of_the_user(
    make_relay: Start, provider: TestProvider
) -> None:
    """The admin API's revocation by subject ends the provider's grants too."""
    with make_relay(peer="127.0.0.1", admin={"token": TOKEN}) as relay:
        signed_in(relay, provider, "user-1", "alice@example.com")
        signed_in(relay, provider, "user-1", "alice@example.com")
        signed_in(relay, provider, "user-2", "bob@example.com")
        response = relay.post("/admin/sessions/revoke", json={"sub": "user-1"}, headers=bearer())
        assert response.json() == {"ended": 2}
        assert len(provider.revoked) == 2
        assert live_refresh_tokens(provider, "user-1") == set()
        assert len(live_refresh_tokens(provider, "user-2")) == 1


def test_a_provider_that_cannot_revoke_does_not_stop_the_sign_out(
    log_stream: Any, relay: TestClient, provider: TestProvider
) -> None:
    """The session ends and the browser moves on; the failure is one log line naming the
    session by its short hash, never the token."""
    cookie = signed_in(relay, provider, "user-1", "alice@example.com")
    (token,) = live_refresh_tokens(provider, "user-1")
    provider.behaviour.network_failures["/revoke"] = "connect"
    response = as_(relay, cookie).post("/logout", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert as_(relay, cookie).get("/auth").status_code == 401
    failures = [line for line in log_lines(log_stream) if line["event"] == "grants.not_revoked"]
    assert len(failures) == 1 and failures[0]["reason"] == "revocation.unreachable"
    assert len(failures[0]["session"]) == 12
    assert token not in log_stream.getvalue()


def test_revocation_can_be_turned_off(make_relay: Start, provider: TestProvider) -> None:
    """provider.revoke_refresh_tokens = false: the provider is not asked."""
    with make_relay(provider={"revoke_refresh_tokens": False}) as relay:
        cookie = signed_in(relay, provider, "user-1", "alice@example.com")
        as_(relay, cookie).post("/logout", headers={"Origin": PUBLIC_URL})
        assert provider.calls["revoke"] == 0


def test_a_provider_without_a_revocation_endpoint_is_not_asked(
    make_relay: Start, provider: TestProvider
) -> None:
    """No revocation_endpoint in its metadata: nothing to call, and the sign-out is as before."""
    provider.behaviour.discovery_overrides["revocation_endpoint"] = None
    with make_relay() as relay:
        cookie = signed_in(relay, provider, "user-1", "alice@example.com")
        response = as_(relay, cookie).post("/logout", headers=SAME_ORIGIN)
        assert response.status_code == 303
        assert provider.calls["revoke"] == 0
