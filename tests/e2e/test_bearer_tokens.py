"""API callers through the shipped recipes: `curl` with an access token from the real npm
oidc-provider's client-credentials grant, through nginx (deploy/nginx.conf) and Caddy
(deploy/Caddyfile) as written, reaches the app with the caller's identity headers; an expired,
foreign-audience, wrong-issuer or tampered token is a 401 that says invalid_token. And a
sign-out ends the provider's grant too: its introspection then calls the refresh token
inactive."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import text

from relay.crypto import Sealer, hash_id
from tests.e2e.conftest import SESSION_SECRET, Stack, introspect, scripted_login
from tests.e2e.stack import caddy_root_certificate, provider_service
from tests.process import free_port

pytestmark = pytest.mark.e2e

API = "https://api.example.test"
CI_BOT = ("ci-bot", "ci-bot-secret")  # e2e/provider/server.mjs's machine client
INVALID = 'Bearer error="invalid_token"'


def client_credentials(issuer: str, resource: str) -> str:
    """An access token for ci-bot from the provider's token endpoint (RFC 6749 §4.4, with
    RFC 8707's resource)."""
    response = httpx2.post(
        issuer + "/token",
        data={"grant_type": "client_credentials", "resource": resource},
        auth=CI_BOT,
        timeout=15,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def curl(url: str, token: str, cafile: Path) -> tuple[int, dict[str, str], str]:
    """What `curl -H "Authorization: Bearer ..." URL` gets: status, headers, body."""
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--include", "--cacert", str(cafile),
         "--max-time", "15", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.splitlines()
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def callers(stack: Stack) -> Iterator[None]:
    """The relay's rules admit ci-bot's group as well as people (same rules for tokens)."""
    with stack.access_rules('allowed_groups = ["staff", "ci"]'):
        yield


@pytest.fixture(scope="module")
def other_issuer(stack: Stack) -> Iterator[str]:
    """A second real provider, which the relay does not trust, on its own port."""
    port = free_port()
    issuer = f"http://localhost:{port}"
    service = provider_service(
        stack.workdir,
        port,
        {"ISSUER": issuer, "CLIENT_SECRET": "unused-secret-0123456789",
         "REDIRECT_URIS": "http://localhost/cb", "POST_LOGOUT_URIS": "http://localhost/"},
    )  # fmt: skip
    service.name = "other-provider"
    service.log_path = stack.workdir / "other-provider.log"
    service.start(port)
    try:
        yield issuer
    finally:
        service.stop()


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request: pytest.FixtureRequest, stack: Stack) -> tuple[str, Path]:
    """The app's URL through each shipped recipe, and the CA file curl trusts for it."""
    if request.param == "nginx":
        assert stack.cert is not None
        return stack.app_url, stack.cert
    return stack.caddy_url, caddy_root_certificate(stack.workdir)


@pytest.mark.usefixtures("callers")
@pytest.mark.parametrize("resource", [API, API + "/opaque"], ids=["jwt", "introspected"])
def test_curl_with_a_client_credentials_token_reaches_the_app_as_the_caller(
    stack: Stack, proxy: tuple[str, Path], resource: str
) -> None:
    """A JWT (RFC 9068, checked against the provider's keys) and an opaque token (checked by
    the provider's introspection): the app gets ci-bot's identity headers, and the relay
    wrote no session for either."""
    url, cafile = proxy
    sessions = stack.sessions()
    token = client_credentials(stack.issuer, resource)
    for _ in range(2):  # the second is answered from what the relay remembers of the token
        status, _, body = curl(url + "/headers", token, cafile)
        assert status == 200, body
        identity = json.loads(body)
        assert identity["x-auth-request-subject"] == "ci-bot"
        assert identity["x-auth-request-groups"] == "ci"
        assert identity.get("x-auth-request-email", "") == ""  # nginx drops an empty one
    assert stack.sessions() == sessions


@pytest.mark.usefixtures("callers")
def test_a_foreign_audience_a_wrong_issuer_or_a_tampered_token_is_a_401(
    stack: Stack, proxy: tuple[str, Path], other_issuer: str
) -> None:
    """Each is refused with the RFC 6750 challenge, through either proxy, and the app is not
    reached."""
    url, cafile = proxy
    good = client_credentials(stack.issuer, API)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps(claims | {"sub": "admin"}).encode())
    refused = {
        "foreign audience": client_credentials(stack.issuer, "https://other-api.example.test"),
        "wrong issuer": client_credentials(other_issuer, API),
        "tampered": f"{header}.{forged.rstrip(b'=').decode()}.{signature}",
    }
    for what, token in refused.items():
        status, headers, body = curl(url + "/headers", token, cafile)
        assert status == 401, (what, body)
        assert headers.get("www-authenticate") == INVALID, (what, headers)
        assert "x-auth-request-subject" not in body


@pytest.mark.usefixtures("callers")
def test_an_expired_token_is_a_401(stack: Stack) -> None:
    """A token that passed is refused once its exp (plus the stack's 2 s skew) is past, on
    its times alone, through both proxies."""
    token = client_credentials(stack.issuer, API + "/short-lived")  # lives 2 s
    expires = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    assert stack.cert is not None
    targets = [
        (stack.app_url, stack.cert),
        (stack.caddy_url, caddy_root_certificate(stack.workdir)),
    ]
    assert curl(stack.app_url + "/headers", token, stack.cert)[0] == 200
    # Past exp + skew by the wall clock both share: nothing to wait on but time itself.
    time.sleep(max(0.0, expires + 2 + 1 - time.time()))
    for url, cafile in targets:
        status, headers, _ = curl(url + "/headers", token, cafile)
        assert status == 401
        assert headers.get("www-authenticate") == INVALID


def test_a_sign_out_revokes_the_refresh_token_at_the_provider(
    stack: Stack, http: httpx2.Client
) -> None:
    """alice signs in through nginx; her session's refresh token is live at the provider
    (its introspection says so); she signs out; the provider's introspection now says
    inactive (RFC 7009 §2.1)."""
    landed = scripted_login(http, stack.app_url + "/headers")
    assert landed.status_code == 200
    cookie = http.cookies["__Host-relay_session"]
    assert stack.db is not None
    with stack.db.connect() as conn:
        query = text("SELECT refresh_token FROM sessions WHERE id_hash = :h")
        sealed = conn.execute(query, {"h": hash_id(cookie)}).scalar_one()
    refresh_token = Sealer(SESSION_SECRET).open(sealed)
    assert refresh_token

    def introspected() -> dict[str, object]:
        return introspect(
            stack.issuer, stack.client_secret, refresh_token, token_type_hint="refresh_token"
        )

    assert introspected()["active"] is True
    signed_out = http.post(
        stack.public_url + "/logout", headers={"Origin": stack.app_url}, follow_redirects=False
    )
    assert signed_out.status_code == 303
    assert introspected() == {"active": False}
