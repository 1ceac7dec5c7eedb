"""API callers at /auth ([bearer]): a token instead of a cookie. Each rule of RFC 9068 §4 (JWT
access tokens) and RFC 7662 (introspection) that the relay enforces has a test here that fails
without it; RFC 6750 §3 says what the 401 and 403 carry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import FakeClock, base_config, log_lines, sign_in
from tests.provider import ISSUER, TestProvider

API = "https://api.test"
BEARER: dict[str, Any] = {"enabled": True, "audiences": [API]}
INVALID = 'Bearer error="invalid_token"'

Start = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def api(make_relay: Start) -> Iterator[TestClient]:
    """A relay that takes bearer tokens for https://api.test from the test provider."""
    with make_relay(bearer=BEARER) as client:
        yield client


def auth(client: TestClient, token: str, path: str = "/auth", **headers: str) -> Any:
    """A check with the token, asking for JSON (as an API client would) unless told."""
    sent = {"Authorization": f"Bearer {token}", "Accept": "application/json", **headers}
    return client.get(path, headers=sent)


def refused(response: Any, reason: str) -> None:
    """A 401 that says invalid_token (RFC 6750 §3.1), for the reason given."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == INVALID
    assert response.json()["error"] == reason


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(provider: TestProvider, **claims: Any) -> dict[str, Any]:
    """The default access-token payload with ``claims`` over it, as a dict."""
    token = provider.access_token(**claims)
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return decoded


# -- a token that passes ----------------------------------------------------------------------


def test_a_valid_token_passes_with_the_identity_headers_and_writes_no_session(
    api: TestClient, provider: TestProvider, db: Engine
) -> None:
    """A JWT access token from the provider, for our audience, gets the app the caller's
    identity as a session would, and no session row is written."""
    response = auth(api, provider.access_token())
    assert response.status_code == 200, response.text
    assert response.headers["x-auth-request-subject"] == "svc-ci"
    assert response.headers["x-auth-request-email"] == "ci@example.com"
    assert response.headers["x-auth-request-groups"] == "ci"
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sessions")).scalar_one() == 0


def test_bearer_tokens_are_off_by_default(relay: TestClient, provider: TestProvider) -> None:
    """Without [bearer] enabled, a valid token is no session: 401 asking for the cookie."""
    response = auth(relay, provider.access_token())
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Cookie"


def test_the_relay_cookie_wins_over_a_token(make_relay: Start, provider: TestProvider) -> None:
    """A request with the relay's cookie is judged by its session, whatever token it also
    carries: a token cannot change who a signed-in browser is."""
    with make_relay(bearer=BEARER) as client:
        sign_in(client, provider)
        token = provider.access_token(sub="someone-else")
        response = auth(client, token)
        assert response.status_code == 200
        assert response.headers["x-auth-request-subject"] == provider.subject


def test_a_seen_token_passes_on_its_times_until_it_expires(
    api: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """A token verified once is not verified again (the provider's keys may rotate away
    meanwhile) but its expiry is checked on every request: past exp and the skew, 401."""
    token = provider.access_token(exp=int(clock()) + 120)
    assert auth(api, token).status_code == 200
    provider.published = [RSAKey.generate_key(2048, parameters={"kid": "rotated"})]
    assert auth(api, token).status_code == 200
    clock.advance(120 + 60 + 1)  # exp, plus provider.clock_skew
    refused(auth(api, token), "access_token.expired")


# -- RFC 9068 §4, one rule at a time -------------------------------------------------------------


def test_alg_none_is_refused(api: TestClient, provider: TestProvider) -> None:
    """(4): an unsigned token ("alg": "none") never passes."""
    header = {"alg": "none", "typ": "at+jwt"}
    token = f"{b64(header)}.{b64(unsigned(provider))}."
    refused(auth(api, token), "access_token.alg_not_allowed")


def test_hs256_signed_with_the_public_key_is_refused(
    api: TestClient, provider: TestProvider
) -> None:
    """(4): HS256 with the provider's public key (as JWKS publishes it) as the HMAC secret:
    the algorithm-confusion attack. Only asymmetric algorithms are allowed."""
    public = provider.rsa_key.as_pem(private=False)
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "at+jwt"}
    signing_input = f"{b64(header)}.{b64(unsigned(provider))}"
    signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    refused(auth(api, f"{signing_input}.{b64(signature)}"), "access_token.alg_not_allowed")


def test_a_kid_naming_the_providers_key_does_not_lend_it(
    api: TestClient, provider: TestProvider
) -> None:
    """(5) kid confusion: a token signed with another key under the kid of the provider's
    key fails the signature check with that key."""
    forged = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    refused(auth(api, provider.access_token(key=forged)), "access_token.bad_signature")


def test_a_kid_naming_a_key_of_another_type_is_refused(
    api: TestClient, provider: TestProvider
) -> None:
    """(5) kid confusion: RS256 under the kid of the provider's EC key is not verified with
    some other key of the set."""
    attacker = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    token = provider.access_token(key=attacker, header={"alg": "ES256"})
    response = auth(api, token)
    assert response.status_code == 401
    token = provider.access_token(header={"kid": "ec-1"})  # signed RS256 by the RSA key
    refused(auth(api, token), "access_token.unverifiable")


def test_a_key_that_names_its_algorithm_is_used_with_that_one_only(
    api: TestClient, provider: TestProvider
) -> None:
    """RFC 7517 §4.4: a JWKS key published for RS512 does not verify an RS256 token that
    names its kid, though the RSA signature itself would check out."""
    key = RSAKey.generate_key(2048, parameters={"kid": "rs512", "alg": "RS512", "use": "sig"})
    provider.published.append(key)
    # The same key pair, signing RS256 (joserfc itself keeps a key to its alg).
    signer = RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})
    refused(auth(api, provider.access_token(key=signer)), "access_token.unknown_kid")


def test_a_kid_of_one_issuer_does_not_serve_another(
    make_relay: Start, provider: TestProvider
) -> None:
    """(2)/(5): a token that claims an extra issuer is checked with that issuer's keys only,
    however its kid names a key of the login provider's."""
    other = {"issuer": "https://other.test", "audiences": [API], "jwks_uri": ISSUER + "/other-jwks"}
    with make_relay(bearer={**BEARER, "issuers": [other]}) as client:
        token = provider.access_token(iss="https://other.test")  # kid rsa-1, the login key
        refused(auth(client, token), "access_token.unknown_kid")
        own = provider.access_token(key=provider.other_key, iss="https://other.test")
        assert auth(client, own).status_code == 200
        # ...and the login provider's own tokens are not checked against the other's keys.
        stolen = provider.access_token(key=provider.other_key)
        refused(auth(client, stolen), "access_token.unknown_kid")


def test_a_token_without_exp_is_refused(api: TestClient, provider: TestProvider) -> None:
    """(6): exp is required; a token that never expires never passes."""
    refused(auth(api, provider.access_token(drop=("exp",))), "access_token.bad_exp")


def test_an_expired_token_is_refused(
    api: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """(6): exp in the past, beyond the clock skew."""
    token = provider.access_token(exp=int(clock()) - 61)
    refused(auth(api, token), "access_token.expired")


def test_a_token_not_yet_valid_is_refused(
    api: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """RFC 7519 §4.1.5: nbf in the future, beyond the clock skew."""
    token = provider.access_token(nbf=int(clock()) + 3600)
    refused(auth(api, token), "access_token.bad_nbf")


def test_an_audience_list_without_ours_is_refused(api: TestClient, provider: TestProvider) -> None:
    """(3): aud as a list naming other resource servers only."""
    token = provider.access_token(aud=["https://other.test", "relay-client"])
    refused(auth(api, token), "access_token.aud_mismatch")
    assert auth(api, provider.access_token(aud=["https://other.test", API])).status_code == 200


def test_a_token_for_another_audience_is_refused(api: TestClient, provider: TestProvider) -> None:
    """(3): a token for another API never passes here."""
    refused(auth(api, provider.access_token(aud="https://other.test")), "access_token.aud_mismatch")


def test_an_issuer_with_a_trailing_slash_is_another_issuer(
    api: TestClient, provider: TestProvider
) -> None:
    """(2): iss compared exactly: "https://idp.test/" is not "https://idp.test"."""
    refused(auth(api, provider.access_token(iss=ISSUER + "/")), "access_token.unknown_issuer")


def test_an_unknown_issuer_is_refused(api: TestClient, provider: TestProvider) -> None:
    """A token from an issuer the config does not name never passes."""
    refused(
        auth(api, provider.access_token(iss="https://evil.test")), "access_token.unknown_issuer"
    )


def test_an_id_token_does_not_pass_as_an_access_token(
    make_relay: Start, provider: TestProvider
) -> None:
    """(1): typ must be at+jwt. An ID token of the relay's own client, signed by the same
    keys, is refused even with the client id among the audiences."""
    with make_relay(bearer={**BEARER, "audiences": [API, "relay-client"]}) as client:
        id_token = provider.id_token("a-nonce", provider.subject)  # typ absent, aud relay-client
        refused(auth(client, id_token), "access_token.typ_not_at_jwt")
        plain = provider.access_token(header={"typ": "JWT"})
        refused(auth(client, plain), "access_token.typ_not_at_jwt")
        assert auth(client, provider.access_token(header={"typ": "application/at+jwt"})).is_success


def test_typ_any_accepts_plain_jwts(make_relay: Start, provider: TestProvider) -> None:
    """typ = "any", for providers whose access tokens say "JWT" or nothing."""
    with make_relay(bearer={**BEARER, "typ": "any"}) as client:
        assert auth(client, provider.access_token(header={"typ": "JWT"})).status_code == 200
        assert auth(client, provider.access_token(header={"typ": None})).status_code == 200


def test_a_token_without_sub_is_refused(api: TestClient, provider: TestProvider) -> None:
    """RFC 9068 §2.2: sub is required; the headers name the caller by it."""
    refused(auth(api, provider.access_token(drop=("sub",))), "access_token.bad_sub")


def test_a_tampered_token_is_refused(api: TestClient, provider: TestProvider) -> None:
    """(5): a payload changed after signing fails the signature."""
    header, _, signature = provider.access_token().split(".")
    tampered = f"{header}.{b64(unsigned(provider, sub='admin'))}.{signature}"
    refused(auth(api, tampered), "access_token.bad_signature")


@pytest.mark.parametrize("value", ["", "not a token", "a.b", "a.b.c", "é.x.y"])
def test_garbage_is_a_401_not_a_crash(api: TestClient, value: str) -> None:
    """Whatever follows "Bearer" gets a 401 invalid_token, never a 500."""
    response = api.get("/auth", headers={"Authorization": f"Bearer {value}".encode()})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


# -- rules, headers, proxies ----------------------------------------------------------------------


def test_the_access_rules_apply_to_the_token(make_relay: Start, provider: TestProvider) -> None:
    """The [access] rules and /auth's narrowing judge the token's claims: a refusal is a 403
    with insufficient_scope (RFC 6750 §3.1), not a 401."""
    with make_relay(bearer=BEARER, access={"email_domains": [], "allowed_groups": ["ci"]}) as c:
        assert auth(c, provider.access_token()).status_code == 200
        narrowed = auth(c, provider.access_token(), "/auth?allowed_groups=admins")
        assert narrowed.status_code == 403
        assert narrowed.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
        outsider = auth(c, provider.access_token(groups=["guests"]))
        assert outsider.status_code == 403


def test_auth_redirect_answers_a_refused_token_with_401_not_a_login(
    api: TestClient, provider: TestProvider
) -> None:
    """/auth/redirect never sends an API caller to the provider: a bad token is a 401 even
    when the request looks like a page load."""
    token = provider.access_token(aud="https://other.test")
    response = auth(
        api, token, "/auth/redirect", Accept="text/html", **{"Sec-Fetch-Mode": "navigate"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


def test_login_answers_a_caller_with_a_token_with_401_invalid_token(
    api: TestClient, provider: TestProvider
) -> None:
    """nginx hands /login the requests /auth refused: a caller with a token gets the 401
    that says its token is no good, not a redirect to the provider."""
    response = auth(api, provider.access_token(aud="https://other.test"), "/login")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


def test_a_token_is_never_logged(
    make_relay: Start, provider: TestProvider, log_stream: Any
) -> None:
    """Access lines name the token by a short hash, never by its value, passed or refused."""
    with make_relay(bearer=BEARER, logging={"auth_success_sample": 1.0}) as client:
        good, bad = provider.access_token(), provider.access_token(aud="https://other.test")
        auth(client, good)
        auth(client, good)
        auth(client, bad)
    output = log_stream.getvalue()
    for token in (good, bad):
        assert token not in output
        assert token.split(".")[2] not in output
    lines = [line for line in log_lines(log_stream) if line.get("event") == "http.request"]
    # Named by a hash of the token (logs.py would redact a field called "token").
    assert len(lines) == 3 and all(len(line["bearer"]) == 12 for line in lines)


# -- RFC 7662 introspection ---------------------------------------------------------------------


INTROSPECTED: dict[str, Any] = {**BEARER, "introspection": True, "introspection_cache": 30}


def active(provider: TestProvider, clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    answer = {
        "active": True,
        "iss": ISSUER,
        "aud": API,
        "sub": "svc-ci",
        "exp": int(clock()) + 300,
        "email": "ci@example.com",
        "email_verified": True,
        "token_type": "Bearer",
        **overrides,
    }
    return {k: v for k, v in answer.items() if v is not None}


def test_an_opaque_token_is_introspected_and_the_answer_reused(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """§2.2 active: true passes; the answer is reused for introspection_cache seconds, then
    the provider is asked again (and says the token was revoked meanwhile)."""
    provider.introspection["opaque-1"] = active(provider, clock)
    with make_relay(bearer=INTROSPECTED) as client:
        first = auth(client, "opaque-1")
        assert first.status_code == 200, first.text
        assert first.headers["x-auth-request-subject"] == "svc-ci"
        assert auth(client, "opaque-1").status_code == 200
        assert provider.calls["introspect"] == 1
        del provider.introspection["opaque-1"]
        clock.advance(31)
        refused(auth(client, "opaque-1"), "access_token.inactive")
        assert provider.calls["introspect"] == 2


def test_an_introspected_token_is_not_reused_past_its_exp(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """The cache never outlives the token: exp 5 s away, the answer (kept up to 300 s) is not
    used at 5 s + skew."""
    provider.introspection["short"] = active(provider, clock, exp=int(clock()) + 5)
    with make_relay(bearer={**INTROSPECTED, "introspection_cache": 300}) as client:
        assert auth(client, "short").status_code == 200
        clock.advance(5 + 60 + 1)
        refused(auth(client, "short"), "access_token.expired")
        assert provider.calls["introspect"] == 2


def test_an_inactive_answer_is_remembered(make_relay: Start, provider: TestProvider) -> None:
    """A stream of bad tokens is not a stream of calls to the provider."""
    with make_relay(bearer=INTROSPECTED) as client:
        for _ in range(3):
            refused(auth(client, "nonsense"), "access_token.inactive")
        assert provider.calls["introspect"] == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": None}, "access_token.aud_mismatch"),
        ({"aud": "https://other.test"}, "access_token.aud_mismatch"),
        ({"iss": ISSUER + "/"}, "access_token.iss_mismatch"),
        ({"token_type": "refresh_token"}, "access_token.not_an_access_token"),
        ({"active": "true"}, "access_token.inactive"),
        ({"sub": None}, "access_token.bad_sub"),
    ],
)
def test_an_introspection_answer_is_held_to_the_rules(
    make_relay: Start,
    provider: TestProvider,
    clock: FakeClock,
    overrides: dict[str, Any],
    reason: str,
) -> None:
    """§2.2: only active true (the JSON boolean); our audience named; the issuer exactly;
    an access token, not a refresh token; someone to name."""
    provider.introspection["t"] = active(provider, clock, **overrides)
    with make_relay(bearer=INTROSPECTED) as client:
        refused(auth(client, "t"), reason)


def test_an_opaque_token_without_introspection_is_refused(
    api: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """With introspection off, a token that is not a JWT is not asked about anywhere."""
    provider.introspection["opaque-1"] = active(provider, clock)
    refused(auth(api, "opaque-1"), "access_token.not_a_jwt")
    assert provider.calls["introspect"] == 0


def test_a_provider_that_cannot_introspect_is_a_503_not_a_401(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """The provider down is the provider's trouble: 503/504, never a 401 that tells the
    caller its token is bad."""
    provider.introspection["opaque-1"] = active(provider, clock)
    with make_relay(bearer=INTROSPECTED) as client:
        provider.behaviour.network_failures["/introspect"] = "connect"
        assert auth(client, "opaque-1").status_code == 503
        provider.behaviour.network_failures["/introspect"] = "timeout"
        assert auth(client, "opaque-1").status_code == 504
        provider.behaviour.network_failures.clear()
        assert auth(client, "opaque-1").status_code == 200


# -- configuration ---------------------------------------------------------------------------


def test_enabled_without_audiences_stops_startup(database_url: str) -> None:
    """One line naming bearer.audiences."""
    from relay.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        base_config(database_url, bearer={"enabled": True})
    assert caught.value.lines[0].startswith("bearer.audiences: ")


@pytest.mark.parametrize("alg", ["none", "HS256", "hs512"])
def test_symmetric_and_none_algorithms_cannot_be_allowed(database_url: str, alg: str) -> None:
    """bearer.algorithms refuses none and HMAC: a public key must never be a secret."""
    from relay.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        base_config(database_url, bearer={**BEARER, "algorithms": ["RS256", alg]})
    assert caught.value.lines[0].startswith("bearer.algorithms: ")
