"""The relying party against a provider that misbehaves, written from the specs.

Tests named rp_* follow the OpenID Foundation's RP certification tests (Basic RP and Config
RP profiles) of the same name; the others cover OIDC Core 1.0 §3.1.3.7 and §5.3.2,
RFC 7636, RFC 9207 and RFC 9700 beyond them. Each drives a whole login through /login, the
in-process provider and /callback, and checks what the relay did with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import httpx2
import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import callback_path, provider_redirect, query
from tests.provider import CLIENT_ID, CLIENT_SECRET, ISSUER, TestProvider


def sessions(db: Engine) -> int:
    with db.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM sessions WHERE status='active'"))
        return int(count.scalar_one())


def attempt(relay: TestClient, provider: TestProvider) -> httpx2.Response:
    """One whole login; the /callback response, as JSON when it is an error."""
    start = relay.get("/login")
    assert start.status_code == 302, start.text
    url = provider_redirect(provider, start.headers["location"])
    return relay.get(callback_path(url), headers={"Accept": "application/json"})


def refused(response: httpx2.Response, reason: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason


def accepted(response: httpx2.Response, relay: TestClient) -> None:
    assert response.status_code == 302, response.text
    assert relay.get("/auth").status_code == 200


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- Basic RP profile -----------------------------------------------------------------------


def test_rp_response_type_code(relay: TestClient) -> None:
    """The authorization request uses the code flow: response_type=code, with PKCE S256."""
    params = query(relay.get("/login").headers["location"])
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256"
    assert "openid" in params["scope"].split()


def test_rp_nonce_invalid(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """An ID token whose nonce differs from the one sent is rejected (OIDC Core 3.1.3.7 (11))."""
    provider.behaviour.id_token_claims["nonce"] = "not-the-nonce-we-sent"
    refused(attempt(relay, provider), "id_token.nonce_mismatch")
    assert sessions(db) == 0


def test_rp_nonce_missing(relay: TestClient, provider: TestProvider) -> None:
    """An ID token without the nonce that was sent is rejected."""
    provider.behaviour.drop_claims.append("nonce")
    refused(attempt(relay, provider), "id_token.nonce_mismatch")


def test_rp_token_endpoint_client_secret_basic(relay: TestClient, provider: TestProvider) -> None:
    """The client authenticates with HTTP Basic (RFC 6749 §2.3.1); no secret in the body."""
    accepted(attempt(relay, provider), relay)
    [exchange] = provider.token_requests
    scheme, _, encoded = exchange["headers"]["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{CLIENT_ID}:{CLIENT_SECRET}"
    assert "client_secret" not in exchange["form"]


def test_rp_id_token_aud_mismatch(relay: TestClient, provider: TestProvider) -> None:
    """An ID token for another audience is rejected (3.1.3.7 (3))."""
    provider.behaviour.id_token_claims["aud"] = "some-other-client"
    refused(attempt(relay, provider), "id_token.aud_mismatch")


def test_rp_id_token_kid_absent_single_jwks(relay: TestClient, provider: TestProvider) -> None:
    """No kid in the header and one key in the JWKS: that key verifies the token."""
    provider.published = [provider.rsa_key]
    provider.behaviour.id_token_header["kid"] = None
    accepted(attempt(relay, provider), relay)


def test_rp_id_token_kid_absent_multiple_jwks(relay: TestClient, provider: TestProvider) -> None:
    """No kid and several keys: the relay tries each of the provider's keys; the right one
    verifies it (the certification test accepts this or a rejection)."""
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-0", "use": "sig"})
    provider.published = [other, provider.ec_key, provider.rsa_key]
    provider.behaviour.id_token_header["kid"] = None
    accepted(attempt(relay, provider), relay)


def test_rp_id_token_kid_absent_multiple_jwks_none_verifies(
    relay: TestClient, provider: TestProvider
) -> None:
    """No kid, several keys, and none of them made the signature: rejected."""
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-0", "use": "sig"})
    provider.published = [other, provider.rsa_key]
    provider.behaviour.signing_key = stranger
    provider.behaviour.id_token_header["kid"] = None
    refused(attempt(relay, provider), "id_token.bad_signature")


def test_rp_id_token_sig_none(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """An unsigned ID token (alg "none") is rejected (3.1.3.7 (7))."""
    accepted(attempt(relay, provider), relay)  # a real token, to build the unsigned one from
    relay.cookies.clear()
    start = relay.get("/login")
    grant_url = provider_redirect(provider, start.headers["location"])
    nonce = provider.grants[query(grant_url)["code"]].nonce
    claims = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "nonce": nonce,
        "iat": int(provider.clock()),
        "exp": int(provider.clock()) + 300,
    }
    unsigned = b64(b'{"alg":"none"}') + "." + b64(json.dumps(claims).encode()) + "."
    provider.behaviour.token_body = {
        "id_token": unsigned,
        "token_type": "Bearer",
        "access_token": "x",
    }
    provider.behaviour.token_status = 200
    response = relay.get(callback_path(grant_url), headers={"Accept": "application/json"})
    refused(response, "id_token.alg_not_allowed")
    assert sessions(db) == 1  # only the first, real login


def test_rp_id_token_issuer_mismatch(relay: TestClient, provider: TestProvider) -> None:
    """An ID token from another issuer is rejected (3.1.3.7 (2))."""
    provider.behaviour.id_token_claims["iss"] = "https://other-idp.test"
    refused(attempt(relay, provider), "id_token.iss_mismatch")


def test_rp_id_token_bad_sig_rs256(relay: TestClient, provider: TestProvider) -> None:
    """An RS256 token signed by a key that is not the provider's (same kid) is rejected."""
    provider.behaviour.signing_key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    refused(attempt(relay, provider), "id_token.bad_signature")


def test_rp_id_token_bad_sig_es256(relay: TestClient, provider: TestProvider) -> None:
    """An ES256 token signed by a key that is not the provider's (same kid) is rejected."""
    provider.behaviour.alg = "ES256"
    provider.behaviour.signing_key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    refused(attempt(relay, provider), "id_token.bad_signature")


def test_rp_id_token_iat(relay: TestClient, provider: TestProvider) -> None:
    """An ID token without iat is rejected (3.1.3.7 (10))."""
    provider.behaviour.drop_claims.append("iat")
    refused(attempt(relay, provider), "id_token.bad_iat")


def test_rp_id_token_sig_rs256(relay: TestClient, provider: TestProvider) -> None:
    """An RS256-signed ID token from the provider is accepted."""
    accepted(attempt(relay, provider), relay)


def test_rp_id_token_sig_es256(relay: TestClient, provider: TestProvider) -> None:
    """An ES256-signed ID token from the provider is accepted."""
    provider.behaviour.alg = "ES256"
    accepted(attempt(relay, provider), relay)


def test_rp_id_token_sub(relay: TestClient, provider: TestProvider) -> None:
    """An ID token without sub is rejected (OIDC Core §2)."""
    provider.behaviour.drop_claims.append("sub")
    refused(attempt(relay, provider), "id_token.bad_sub")


def test_rp_userinfo_bad_sub_claim(relay: TestClient, provider: TestProvider, db: Engine) -> None:
    """Userinfo whose sub differs from the ID token's is not used: the login is refused
    (OIDC Core 5.3.2)."""
    provider.behaviour.userinfo_claims["sub"] = "someone-else"
    refused(attempt(relay, provider), "userinfo.sub_mismatch")
    assert sessions(db) == 0


def test_rp_userinfo_bearer_header(relay: TestClient, provider: TestProvider) -> None:
    """The access token goes to userinfo in the Authorization header (RFC 6750 §2.1), and
    userinfo's claims reach the identity headers."""
    provider.behaviour.userinfo_claims["email"] = "from-userinfo@example.com"
    provider.profile.pop("email")  # the ID token no longer carries it
    accepted(attempt(relay, provider), relay)
    [request] = provider.userinfo_requests
    assert request["authorization"].startswith("Bearer at-")
    assert relay.get("/auth").headers["x-auth-request-email"] == "from-userinfo@example.com"


# -- Config RP profile ----------------------------------------------------------------------


def test_rp_discovery_openid_configuration(relay: TestClient, provider: TestProvider) -> None:
    """The relay reads issuer + /.well-known/openid-configuration (once, at startup) and sends
    the browser to the authorization_endpoint it names."""
    assert provider.calls["discovery"] == 1
    assert relay.get("/login").headers["location"].startswith(ISSUER + "/authorize?")
    assert provider.calls["discovery"] == 1


def test_rp_discovery_uses_advertised_endpoints(make_relay: Any, provider: TestProvider) -> None:
    """A relay started against a provider with moved endpoints uses the advertised ones."""
    provider.behaviour.discovery_overrides["authorization_endpoint"] = ISSUER + "/authorize?v=2"
    with make_relay() as relay:
        location = relay.get("/login").headers["location"]
    assert location.startswith(ISSUER + "/authorize?v=2&")
    assert query(location)["v"] == "2"


def test_rp_discovery_jwks_uri_keys(make_relay: Any, provider: TestProvider) -> None:
    """Signing keys come from the advertised jwks_uri, fetched once."""
    provider.behaviour.discovery_overrides["jwks_uri"] = ISSUER + "/jwks?set=current"
    with make_relay() as relay:
        accepted(attempt(relay, provider), relay)
        accepted(attempt(relay, provider), relay)
    assert provider.calls["jwks"] == 1


def test_rp_discovery_issuer_not_matching_config(make_relay: Any, provider: TestProvider) -> None:
    """A discovery document naming another issuer is not used: no login starts
    (Discovery §4.3)."""
    provider.behaviour.discovery_overrides["issuer"] = "https://impostor.test"
    with make_relay() as relay:
        response = relay.get("/login", headers={"Accept": "text/html"})  # a navigation
        assert response.status_code == 503
        ready = relay.get("/readyz").json()
    assert ready["provider"] == "unavailable: discovery.issuer_mismatch"


def test_rp_key_rotation_op_sign_key(relay: TestClient, provider: TestProvider) -> None:
    """The provider rotates its signing key: a token with the new kid makes the relay refetch
    the JWKS once and accept it."""
    accepted(attempt(relay, provider), relay)
    new = RSAKey.generate_key(2048, parameters={"kid": "rsa-2", "use": "sig"})
    provider.published = [new, provider.ec_key]
    provider.behaviour.signing_key = new
    relay.cookies.clear()
    accepted(attempt(relay, provider), relay)
    assert provider.calls["jwks"] == 2


def test_unknown_kid_refetch_is_rate_limited(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """Tokens with unknown kids refetch the JWKS at most once per cooldown (60s)."""
    accepted(attempt(relay, provider), relay)
    provider.behaviour.signing_key = RSAKey.generate_key(2048, parameters={"kid": "nope"})
    for _ in range(3):
        refused(attempt(relay, provider), "id_token.unknown_kid")
    assert provider.calls["jwks"] == 2
    clock.advance(61)
    refused(attempt(relay, provider), "id_token.unknown_kid")
    assert provider.calls["jwks"] == 3


# -- Beyond the certification tests ---------------------------------------------------------


def test_alg_confusion_hs256_with_public_key_is_rejected(
    relay: TestClient, provider: TestProvider
) -> None:
    """An HS256 token whose HMAC key is the provider's public key is rejected before any key
    is used: HMAC is never an ID-token algorithm here."""
    start = relay.get("/login")
    grant_url = provider_redirect(provider, start.headers["location"])
    nonce = provider.grants[query(grant_url)["code"]].nonce
    now = int(provider.clock())
    claims = {
        "iss": ISSUER,
        "sub": "attacker",
        "aud": CLIENT_ID,
        "nonce": nonce,
        "iat": now,
        "exp": now + 300,
    }
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(claims).encode())
    public_pem = provider.rsa_key.as_pem(private=False)
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    provider.behaviour.token_body = {
        "id_token": f"{header}.{body}.{b64(mac)}",
        "token_type": "Bearer",
        "access_token": "x",
    }
    response = relay.get(callback_path(grant_url), headers={"Accept": "application/json"})
    refused(response, "id_token.alg_not_allowed")


def test_only_advertised_algorithms_are_accepted(make_relay: Any, provider: TestProvider) -> None:
    """A provider that advertises RS256 only cannot log in with an ES256 token."""
    provider.behaviour.discovery_overrides["id_token_signing_alg_values_supported"] = ["RS256"]
    provider.behaviour.alg = "ES256"
    with make_relay() as relay:
        refused(attempt(relay, provider), "id_token.alg_not_allowed")


def test_only_configured_algorithms_are_accepted(make_relay: Any, provider: TestProvider) -> None:
    """An algorithm the provider advertises but the config does not allow is refused."""
    with make_relay(provider={"allowed_algorithms": ["RS256"]}) as relay:
        provider.behaviour.alg = "ES256"
        refused(attempt(relay, provider), "id_token.alg_not_allowed")


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS256", lambda: RSAKey.generate_key(2048, parameters={"kid": "k", "use": "sig"})),
        ("PS256", lambda: RSAKey.generate_key(2048, parameters={"kid": "k", "use": "sig"})),
        ("ES256", lambda: ECKey.generate_key("P-256", parameters={"kid": "k", "use": "sig"})),
        ("EdDSA", lambda: OKPKey.generate_key("Ed25519", parameters={"kid": "k", "use": "sig"})),
    ],
)
def test_advertised_algorithms_work(
    make_relay: Any, provider: TestProvider, alg: str, key: Any
) -> None:
    """RS256, PS256, ES256 and EdDSA ID tokens are accepted when the provider advertises them."""
    signing = key()
    provider.published = [signing]
    provider.behaviour.signing_key = signing
    provider.behaviour.alg = alg
    provider.behaviour.discovery_overrides["id_token_signing_alg_values_supported"] = [alg]
    with make_relay() as relay:
        accepted(attempt(relay, provider), relay)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -1}, "id_token.expired"),  # relative to now, see below
        ({"iat": 3600}, "id_token.bad_iat"),
        ({"nbf": 3600}, "id_token.bad_nbf"),
    ],
    ids=["expired-exp", "iat-in-future", "nbf-in-future"],
)
def test_time_claims(
    relay: TestClient, provider: TestProvider, claims: dict[str, int], reason: str
) -> None:
    """exp in the past, iat or nbf in the future (beyond the 60s skew) are rejected."""
    now = int(provider.clock())
    provider.behaviour.id_token_claims.update(
        {name: now + offset - (60 if name == "exp" else 0) for name, offset in claims.items()}
    )
    refused(attempt(relay, provider), reason)


def test_time_claims_within_skew_are_accepted(relay: TestClient, provider: TestProvider) -> None:
    """A provider clock 30s ahead (iat, nbf in the future within the skew) is tolerated."""
    now = int(provider.clock())
    provider.behaviour.id_token_claims.update({"iat": now + 30, "nbf": now + 30})
    accepted(attempt(relay, provider), relay)


def test_multiple_audiences_without_azp(make_relay: Any, provider: TestProvider) -> None:
    """Several audiences and no azp: rejected (3.1.3.7 (4)), even when all are trusted."""
    provider.behaviour.id_token_claims["aud"] = [CLIENT_ID, "api"]
    with make_relay(provider={"trusted_audiences": ["api"]}) as relay:
        refused(attempt(relay, provider), "id_token.azp_missing")


def test_multiple_audiences_with_wrong_azp(make_relay: Any, provider: TestProvider) -> None:
    """Several audiences and azp naming another client: rejected (3.1.3.7 (5))."""
    provider.behaviour.id_token_claims.update({"aud": [CLIENT_ID, "api"], "azp": "api"})
    with make_relay(provider={"trusted_audiences": ["api"]}) as relay:
        refused(attempt(relay, provider), "id_token.azp_mismatch")


def test_untrusted_extra_audience(relay: TestClient, provider: TestProvider) -> None:
    """An extra audience the relay does not trust is rejected (3.1.3.7 (3))."""
    provider.behaviour.id_token_claims.update({"aud": [CLIENT_ID, "stranger"], "azp": CLIENT_ID})
    refused(attempt(relay, provider), "id_token.untrusted_audience")


def test_multiple_trusted_audiences_with_azp(make_relay: Any, provider: TestProvider) -> None:
    """Several trusted audiences with azp = our client_id: accepted."""
    provider.behaviour.id_token_claims.update({"aud": [CLIENT_ID, "api"], "azp": CLIENT_ID})
    with make_relay(provider={"trusted_audiences": ["api"]}) as relay:
        accepted(attempt(relay, provider), relay)


# -- RFC 9207: the authorization server's issuer in the response ------------------------------


def callback_params(relay: TestClient, provider: TestProvider) -> dict[str, str]:
    return query(provider_redirect(provider, relay.get("/login").headers["location"]))


def test_iss_parameter_mismatch(relay: TestClient, provider: TestProvider) -> None:
    """An iss parameter naming another issuer is refused before the code is used (mix-up)."""
    params = callback_params(relay, provider) | {"iss": "https://evil.example"}
    response = relay.get("/callback", params=params, headers={"Accept": "application/json"})
    refused(response, "callback.iss_mismatch")
    assert provider.calls["token"] == 0


def test_iss_parameter_required_when_advertised(relay: TestClient, provider: TestProvider) -> None:
    """The provider advertises authorization_response_iss_parameter_supported: a response
    without iss is refused."""
    params = callback_params(relay, provider)
    del params["iss"]
    response = relay.get("/callback", params=params, headers={"Accept": "application/json"})
    refused(response, "callback.iss_missing")
    assert provider.calls["token"] == 0


def test_iss_parameter_optional_when_not_required(make_relay: Any, provider: TestProvider) -> None:
    """With require_iss_parameter = false, a response without iss is processed."""
    with make_relay(provider={"require_iss_parameter": False}) as relay:
        params = callback_params(relay, provider)
        del params["iss"]
        assert relay.get("/callback", params=params).status_code == 302


def test_iss_parameter_optional_when_not_advertised(
    make_relay: Any, provider: TestProvider
) -> None:
    """A provider that does not advertise RFC 9207 support may omit iss."""
    provider.behaviour.discovery_overrides["authorization_response_iss_parameter_supported"] = False
    with make_relay() as relay:
        params = callback_params(relay, provider)
        del params["iss"]
        assert relay.get("/callback", params=params).status_code == 302


# -- RFC 7636: PKCE -------------------------------------------------------------------------


def test_pkce_challenge_is_s256_of_the_verifier_sent(
    relay: TestClient, provider: TestProvider
) -> None:
    """The code_challenge is BASE64URL(SHA256(verifier)) of the verifier sent at the token
    endpoint (RFC 7636 §4.2, §4.5), and the verifier has 43-128 unreserved characters."""
    challenge = query(relay.get("/login").headers["location"])["code_challenge"]
    relay.cookies.clear()
    accepted(attempt(relay, provider), relay)
    verifier = provider.token_requests[-1]["form"]["code_verifier"]
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
    grant = next(g for g in provider.grants.values() if g.used)
    assert b64(hashlib.sha256(verifier.encode()).digest()) == grant.code_challenge
    assert challenge != grant.code_challenge  # every login has its own verifier


# -- Provider errors and failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        ("access_denied", "access_denied"),
        ("login_required", "login_required"),
        ("temporarily_unavailable", "temporarily_unavailable"),
        ("<img src=x onerror=alert(1)>", "unknown_error"),
        ("x" * 500, "unknown_error"),
    ],
    ids=["access_denied", "login_required", "unknown", "markup", "huge"],
)
def test_provider_error_response(
    relay: TestClient, provider: TestProvider, error: str, shown: str
) -> None:
    """An error response is a 400 page naming the code when it is a plain token, never the
    provider's raw text (OIDC Core 3.1.2.6)."""
    params = callback_params(relay, provider)
    response = relay.get(
        "/callback",
        params={
            "error": error,
            "error_description": '<b>Bold</b> & "odd"',
            "state": params["state"],
        },
    )
    assert response.status_code == 400
    assert shown in response.text
    assert "<b>" not in response.text and "<img" not in response.text
    assert "Bold" not in response.text


@pytest.mark.parametrize(
    ("path", "failure", "status"),
    [
        ("/token", "timeout", 504),
        ("/token", "connect", 503),
        ("/jwks", "timeout", 504),
        ("/jwks", "connect", 503),
        ("/userinfo", "timeout", 504),
    ],
)
def test_provider_endpoint_unreachable(
    relay: TestClient, provider: TestProvider, db: Engine, *, path: str, failure: str, status: int
) -> None:
    """A silent or refusing provider endpoint is a 503/504 page, no session, and the relay
    keeps serving."""
    provider.behaviour.network_failures[path] = failure
    response = attempt(relay, provider)
    assert response.status_code == status
    assert sessions(db) == 0
    provider.behaviour.network_failures.clear()
    relay.cookies.clear()
    accepted(attempt(relay, provider), relay)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, {"error": "server_error"}, "token.status_500"),
        (200, ["not", "an", "object"], "token.not_an_object"),
        (200, {"token_type": "Bearer"}, "token.missing_id_token"),
        (200, {"id_token": "a.b.c", "token_type": "mac"}, "token.bad_token_type"),
        (302, {}, "token.status_302"),
    ],
    ids=["500", "array", "no-id-token", "not-bearer", "redirect"],
)
def test_token_endpoint_garbage(
    relay: TestClient, provider: TestProvider, status: int, body: Any, reason: str
) -> None:
    """A token endpoint answering 5xx or nonsense is a 502 page."""
    provider.behaviour.token_status = status
    provider.behaviour.token_body = body
    refused(attempt(relay, provider), reason, status=502)


def test_token_endpoint_not_json(relay: TestClient, provider: TestProvider) -> None:
    """A token endpoint answering HTML is a 502."""
    provider.behaviour.token_raw_body = "<html>oops</html>"
    refused(attempt(relay, provider), "token.not_json", status=502)


def test_jwks_garbage(make_relay: Any, provider: TestProvider) -> None:
    """A JWKS that is not a key set is a 502, not a crash."""
    provider.behaviour.discovery_overrides["jwks_uri"] = (
        ISSUER + "/.well-known/openid-configuration"
    )
    with make_relay() as relay:
        refused(attempt(relay, provider), "jwks.invalid", status=502)
