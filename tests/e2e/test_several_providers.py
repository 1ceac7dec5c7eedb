"""Two real providers (two npm oidc-provider processes) on one relay ([[providers]]), each for
its own host: a login for a page on one host goes to its provider, a login for the other's to
the other; each session then refreshes against its own provider (its new access token is
one that provider, and not the other, calls active)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest
from sqlalchemy import text

from relay.crypto import Sealer, hash_id
from tests.e2e.conftest import ACCOUNT, SESSION_SECRET, Stack, introspect, scripted_login
from tests.e2e.stack import Service, provider_service
from tests.process import RelayProcess, free_port

pytestmark = pytest.mark.e2e

PARTNER_SECRET = "partner-client-secret-0123456789"


@dataclass
class Two:
    relay: RelayProcess
    partner_issuer: str
    corp_host: str  # pages here sign in with the stack's provider
    partner_host: str  # pages here with the partner provider


@pytest.fixture
def two(stack: Stack) -> Iterator[Two]:
    """A second provider, and `relay serve` with both (on the port the stack's provider has
    a redirect URI for), refreshing every access token as soon as it is checked."""
    port = free_port()
    partner = f"http://localhost:{port}"
    service: Service = provider_service(
        stack.workdir,
        port,
        {"ISSUER": partner, "CLIENT_SECRET": PARTNER_SECRET,
         "REDIRECT_URIS": stack.pkj_url + "/callback", "POST_LOGOUT_URIS": stack.pkj_url + "/"},
    )  # fmt: skip
    service.name, service.log_path = "partner-provider", stack.workdir / "partner-provider.log"
    service.start(port)
    upstream = stack.ports["upstream"]
    corp_host, partner_host = f"127.0.0.1:{upstream}", f"localhost:{upstream}"
    config = stack.workdir / "relay-two.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {stack.ports["relay_pkj"]}
public_url = "{stack.pkj_url}"

[[providers]]
name = "corp"
label = "Corporate"
hosts = ["{corp_host}"]
issuer = "{stack.issuer}"
client_id = "oidc-relay"
client_secret = "{stack.client_secret}"

[[providers]]
name = "partners"
label = "Partners"
hosts = ["{partner_host}"]
issuer = "{partner}"
client_id = "oidc-relay"
client_secret = "{PARTNER_SECRET}"

[database]
url = "{stack.database_url}"

[session]
secret = "{SESSION_SECRET}"
cookie_secure = false

[access]
email_domains = ["*"]

[redirects]
allowed_hosts = ["{corp_host}", "{partner_host}"]

[headers]
pass_access_token = true

[refresh]
margin = "1h"
"""
    )
    relay = RelayProcess(config)
    relay.start()
    try:
        yield Two(relay, partner, corp_host, partner_host)
    finally:
        relay.stop()
        service.stop()


def active_at(issuer: str, secret: str, token: str) -> bool:
    return introspect(issuer, secret, token)["active"] is True


def stored_access_token(stack: Stack, cookie: str) -> str:
    assert stack.db is not None
    with stack.db.connect() as conn:
        query = text("SELECT access_token FROM sessions WHERE id_hash = :h")
        sealed = conn.execute(query, {"h": hash_id(cookie)}).scalar_one()
    token = Sealer(SESSION_SECRET).open(sealed)
    assert token
    return token


@pytest.mark.parametrize("who", ["corp", "partners"])
def test_each_host_signs_in_with_its_provider_and_refreshes_there(
    stack: Stack, two: Two, who: str
) -> None:
    """The return URL's host picks the provider; after the login, a check refreshes the
    session's access token at that provider, whose introspection calls the new token
    active (and the other provider's does not know it)."""
    host = two.corp_host if who == "corp" else two.partner_host
    issuer = stack.issuer if who == "corp" else two.partner_issuer
    secret = stack.client_secret if who == "corp" else PARTNER_SECRET
    other_issuer = two.partner_issuer if who == "corp" else stack.issuer
    other_secret = PARTNER_SECRET if who == "corp" else stack.client_secret
    with httpx2.Client(follow_redirects=True, timeout=15) as client:
        start = client.get(
            stack.pkj_url + "/login", params={"rd": f"http://{host}/headers"},
            follow_redirects=False,
        )  # fmt: skip
        assert start.status_code == 302
        assert start.headers["location"].startswith(issuer + "/"), start.headers["location"]
        landed = scripted_login(client, str(start.url))
        assert str(landed.url) == f"http://{host}/headers"
        cookie = client.cookies["relay_session"]
        at_login = stored_access_token(stack, cookie)
        assert active_at(issuer, secret, at_login)

        check = client.get(stack.pkj_url + "/auth")
        assert check.status_code == 200
        assert check.headers["x-auth-request-subject"] == ACCOUNT
        refreshed = check.headers["x-auth-request-access-token"]
        assert refreshed != at_login
        assert active_at(issuer, secret, refreshed)
        assert not active_at(other_issuer, other_secret, refreshed)


def test_with_no_host_to_go_by_the_person_chooses(stack: Stack, two: Two) -> None:
    """A login for a page on neither host: a page with both providers; each link is a
    /login that names one."""
    page = httpx2.get(stack.pkj_url + "/login", params={"rd": "/oauth2/"}, timeout=15)
    assert page.status_code == 200
    assert "Corporate" in page.text and "Partners" in page.text
    assert "provider=partners" in page.text
