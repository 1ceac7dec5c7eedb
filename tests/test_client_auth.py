"""The relay's client authentication without a shared secret (private_key_jwt: RFC 7523 §2.2
and §3, OIDC Core §9), the public key it publishes for it, and Pushed Authorization Requests
(RFC 9126)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key, RSAKey
from starlette.testclient import TestClient

from relay.config import ConfigError
from tests.conftest import PUBLIC_URL, base_config, query, sign_in
from tests.provider import CLIENT_ID, ISSUER, TestProvider

Start = Callable[..., Any]


def key_file(path: Path, key: Key) -> Path:
    path.write_bytes(key.as_pem(private=True))
    return path


def registered(key: Key) -> Key:
    """The client's key as the provider registers it: public, named by its thumbprint (the
    relay's kid unless provider.private_key_id says otherwise)."""
    public = key.as_dict(private=False) | {"kid": key.thumbprint()}
    return type(key).import_key(public)


def pkj(path: Path, **more: Any) -> dict[str, Any]:
    return {
        "token_endpoint_auth_method": "private_key_jwt",
        "private_key_file": str(path),
        "client_secret": None,
        **more,
    }


@pytest.fixture
def rsa(tmp_path: Path) -> tuple[Key, Path]:
    key = RSAKey.generate_key(2048)
    return key, key_file(tmp_path / "relay-key.pem", key)


def test_a_login_with_private_key_jwt_sends_no_secret(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path]
) -> None:
    """§2.2: the code is exchanged with a client assertion instead of a secret: iss and sub
    the client id, aud the token endpoint, a short exp, a jti; no Basic header."""
    key, path = rsa
    provider.client_keys = [registered(key)]
    with make_relay(provider=pkj(path)) as client:
        assert sign_in(client, provider).status_code == 302
    (request,) = provider.token_requests
    assert "authorization" not in request["headers"]
    assert "client_secret" not in request["form"]
    assert request["form"]["client_id"] == CLIENT_ID
    (claims,) = provider.assertions
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == ISSUER + "/token"
    assert 0 < claims["exp"] - claims["iat"] <= 60


def test_an_assertion_from_another_key_is_refused_by_the_provider(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path]
) -> None:
    """The provider holds a different key: the code exchange is refused as the client's
    mistake (503, the operator's to fix), and nobody is signed in."""
    _, path = rsa
    provider.client_keys = [registered(RSAKey.generate_key(2048))]
    with make_relay(provider=pkj(path)) as client:
        response = sign_in(client, provider)
    assert response.status_code == 503
    assert "__Host-relay_session" not in response.cookies


def test_the_public_key_is_published_at_jwks_json(make_relay: Start, rsa: tuple[Key, Path]) -> None:
    """The client's jwks_uri: the public key only, with its kid, use and alg."""
    key, path = rsa
    with make_relay(provider=pkj(path)) as client:
        response = client.get("/jwks.json")
    assert response.status_code == 200
    (published,) = response.json()["keys"]
    assert published["kid"] == key.thumbprint()
    assert published["use"] == "sig" and published["alg"] == "RS256"
    assert published["n"] == key.as_dict()["n"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published)


def test_there_is_no_jwks_without_private_key_jwt(relay: TestClient) -> None:
    """A relay that authenticates with a secret has no key to publish: 404."""
    assert relay.get("/jwks.json").status_code == 404


def test_a_replaced_key_file_is_used_without_a_restart(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path]
) -> None:
    """Rotation: a new key in the file is published and signs the next assertions at once;
    the provider, which fetched the new set, accepts them."""
    old, path = rsa
    provider.client_keys = [registered(old)]
    with make_relay(provider=pkj(path)) as client:
        assert sign_in(client, provider).status_code == 302
        new = ECKey.generate_key("P-256")
        key_file(path, new)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        (published,) = client.get("/jwks.json").json()["keys"]
        assert published["kid"] == new.thumbprint() and published["alg"] == "ES256"
        provider.client_keys = [registered(new)]
        assert sign_in(client, provider).status_code == 302
    assert len(provider.assertions) == 2


def test_the_next_key_is_published_before_it_signs(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path], tmp_path: Path
) -> None:
    """Rotation for providers that cache the client's key set: the next key, in
    published_key_files, is served beside the signing one and signs nothing; its public
    half is enough."""
    key, path = rsa
    nxt = ECKey.generate_key("P-256")
    public = tmp_path / "next.pem"
    public.write_bytes(nxt.as_pem(private=False))
    provider.client_keys = [registered(key)]
    with make_relay(provider=pkj(path, published_key_files=[str(public)])) as client:
        kids = [k["kid"] for k in client.get("/jwks.json").json()["keys"]]
        assert kids == [key.thumbprint(), nxt.thumbprint()]
        assert sign_in(client, provider).status_code == 302
    (claims,) = provider.assertions
    assert claims["aud"] == ISSUER + "/token"


def test_revocation_and_introspection_authenticate_with_the_key_too(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path]
) -> None:
    """Each endpoint for clients gets an assertion for its own URL (RFC 7523 §3 (3))."""
    key, path = rsa
    provider.client_keys = [registered(key)]
    with make_relay(provider=pkj(path)) as client:
        sign_in(client, provider)
        client.post("/logout", headers={"Origin": PUBLIC_URL})
    assert provider.calls["revoke"] == 1 and len(provider.revoked) == 1
    assert [a["aud"] for a in provider.assertions] == [ISSUER + "/token", ISSUER + "/revoke"]


def test_private_key_jwt_needs_a_readable_private_key(tmp_path: Path, database_url: str) -> None:
    """One line naming provider.private_key_file: missing, unreadable, or a public key."""
    public = tmp_path / "public.pem"
    public.write_bytes(RSAKey.generate_key(2048).as_pem(private=False))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError) as caught:
        base_config(database_url, provider=pkj(public, published_key_files=[str(garbage)]))
    assert any(line.startswith("provider.published_key_files: ") for line in caught.value.lines)
    cases = {
        "is required": {"token_endpoint_auth_method": "private_key_jwt", "client_secret": None},
        "cannot be read": pkj(tmp_path / "absent.pem"),
        "public key": pkj(public),
    }
    for words, settings in cases.items():
        with pytest.raises(ConfigError) as caught:
            base_config(database_url, provider=settings)
        (line,) = caught.value.lines
        assert line.startswith("provider.private_key_file: ") and words in line, line


# -- RFC 9126 ---------------------------------------------------------------------------------


def test_pushed_authorization_where_the_provider_offers_it(
    make_relay: Start, provider: TestProvider
) -> None:
    """§4: the browser's URL carries only client_id and request_uri; the state, nonce and
    PKCE challenge went to the provider directly. The login completes."""
    provider.behaviour.par = True
    with make_relay() as client:
        start = client.get("/login", params={"rd": "/"})
        assert start.status_code == 302
        assert set(query(start.headers["location"])) == {"client_id", "request_uri"}
        (pushed,) = provider.pushed.values()
        assert pushed["code_challenge_method"] == "S256" and pushed["state"]
        assert sign_in(client, provider).status_code == 302


def test_pushed_authorization_can_be_turned_off(make_relay: Start, provider: TestProvider) -> None:
    """pushed_authorization = "never": the request goes in the URL as before."""
    provider.behaviour.par = True
    with make_relay(provider={"pushed_authorization": "never"}) as client:
        start = client.get("/login", params={"rd": "/"})
    assert "state" in query(start.headers["location"])
    assert provider.pushed == {}


def test_always_without_an_endpoint_is_the_operators_to_fix(
    make_relay: Start, provider: TestProvider
) -> None:
    """pushed_authorization = "always" and a provider that offers none: 503, never a
    request in the URL."""
    with make_relay(provider={"pushed_authorization": "always"}) as client:
        start = client.get("/login", params={"rd": "/"})
    assert start.status_code == 503
    assert "misconfigured" in start.text
    assert provider.authorize_requests == []


def test_a_pushed_request_is_authenticated_with_the_key(
    make_relay: Start, provider: TestProvider, rsa: tuple[Key, Path]
) -> None:
    """PAR with private_key_jwt: the push carries an assertion for the PAR endpoint."""
    key, path = rsa
    provider.client_keys = [registered(key)]
    provider.behaviour.par = True
    with make_relay(provider=pkj(path)) as client:
        assert sign_in(client, provider).status_code == 302
    assert [a["aud"] for a in provider.assertions] == [ISSUER + "/par", ISSUER + "/token"]
