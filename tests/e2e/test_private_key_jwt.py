"""A relay that authenticates to the real npm oidc-provider with its own key
(private_key_jwt, RFC 7523) and no client secret in its config: the provider fetches the
relay's public key from <public_url>/jwks.json, and a person signs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from joserfc.jwk import ECKey

from tests.e2e.conftest import ACCOUNT, SESSION_SECRET, Stack, scripted_login
from tests.process import RelayProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def pkj_relay(stack: Stack) -> Iterator[Path]:
    """`relay serve` for the provider's client oidc-relay-pkj, with an EC key of its own."""
    key = stack.workdir / "pkj-key.pem"
    key.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    config = stack.workdir / "relay-pkj.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {stack.ports["relay_pkj"]}
public_url = "{stack.pkj_url}"

[provider]
issuer = "{stack.issuer}"
client_id = "oidc-relay-pkj"
token_endpoint_auth_method = "private_key_jwt"
private_key_file = "{key}"

[database]
url = "{stack.database_url}"

[session]
secret = "{SESSION_SECRET}"
cookie_secure = false

[access]
email_domains = ["*"]
"""
    )
    relay = RelayProcess(config)
    relay.start()
    try:
        yield config
    finally:
        relay.stop()


def test_a_private_key_jwt_client_signs_in_with_no_secret(stack: Stack, pkj_relay: Path) -> None:
    """No client secret anywhere in the config; the login completes, /auth passes, and the
    sign-out (which revokes the refresh token with an assertion too) goes through."""
    assert "client_secret" not in pkj_relay.read_text()
    with httpx2.Client(follow_redirects=True, timeout=15) as client:
        landed = scripted_login(client, stack.pkj_url + "/login?rd=/oauth2/")
        assert landed.status_code == 200, landed.text
        assert str(landed.url) == stack.pkj_url + "/"
        check = client.get(stack.pkj_url + "/auth")
        assert check.status_code == 200
        assert check.headers["x-auth-request-subject"] == ACCOUNT
        keys = client.get(stack.pkj_url + "/jwks.json").json()["keys"]
        assert [k["alg"] for k in keys] == ["ES256"] and "d" not in keys[0]
        out = client.post(
            stack.pkj_url + "/logout",
            headers={"Origin": "http://127.0.0.1:" + str(stack.ports["relay_pkj"])},
            follow_redirects=False,
        )
        assert out.status_code == 303
        assert client.get(stack.pkj_url + "/auth").status_code == 401
