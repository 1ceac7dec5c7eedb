"""Step-up through the shipped recipes, against the real npm oidc-provider: a signed-in person
opening deploy/nginx.conf's (and deploy/Caddyfile's) /admin/security/, which needs
acr=urn:mfa, is sent through a second sign-in that asks the provider for it, and comes back
to the page with one session, now carrying that acr."""

from __future__ import annotations

import ssl

import httpx2
import pytest
from sqlalchemy import text

from relay.crypto import hash_id
from tests.e2e.conftest import ACCOUNT, Stack, form, scripted_login
from tests.e2e.stack import caddy_root_certificate

pytestmark = pytest.mark.e2e


def through_the_provider(client: httpx2.Client, url: str, stack: Stack) -> httpx2.Response:
    """Open ``url`` as a browser would and answer whatever the provider asks (a login, maybe
    a consent) until the browser is back where it started."""
    page = client.get(url, headers={"Accept": "text/html"})
    prompts = []
    while str(page.url).startswith(stack.issuer):
        action, fields = form(page.text)
        prompts.append(fields.get("prompt"))
        if fields.get("prompt") == "login":
            fields |= {"login": ACCOUNT, "password": "any"}
        page = client.post(str(page.url.join(action)), data=fields)
        assert len(prompts) < 4, prompts
    assert "login" in prompts, f"the provider was not asked to authenticate again: {prompts}"
    return page


def acr_of(stack: Stack, cookie: str) -> str | None:
    assert stack.db is not None
    with stack.db.connect() as conn:
        query = text("SELECT acr FROM sessions WHERE id_hash = :h AND status = 'active'")
        found: str | None = conn.execute(query, {"h": hash_id(cookie)}).scalar_one_or_none()
        return found


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_a_route_needing_a_second_factor_steps_the_session_up(stack: Stack, proxy: str) -> None:
    """alice signs in (acr urn:pwd); /admin/security/ sends her through the provider again
    with acr_values=urn:mfa and back to the same page; her session is replaced by one with
    acr urn:mfa, and the page then passes without the provider."""
    base = stack.app_url if proxy == "nginx" else stack.caddy_url
    # The relay's own pages are on nginx's port (the stack's public_url), the app on either.
    tls = ssl.create_default_context(cafile=str(stack.cert))
    tls.load_verify_locations(cafile=str(caddy_root_certificate(stack.workdir)))
    with httpx2.Client(verify=tls, follow_redirects=True, timeout=15) as client:
        landed = scripted_login(client, base + "/headers")
        assert landed.status_code == 200
        first = client.cookies["__Host-relay_session"]
        assert acr_of(stack, first) == "urn:pwd"
        sessions = stack.sessions_of(ACCOUNT)

        page = through_the_provider(client, base + "/admin/security/keys?x=1", stack)
        assert str(page.url) == base + "/admin/security/keys?x=1"
        assert page.status_code == 200, page.text
        assert page.json()["x-auth-request-subject"] == ACCOUNT

        upgraded = client.cookies["__Host-relay_session"]
        assert upgraded != first
        assert acr_of(stack, upgraded) == "urn:mfa"
        assert acr_of(stack, first) is None  # replaced, not left beside it
        assert stack.sessions_of(ACCOUNT) == sessions

        again = client.get(base + "/admin/security/keys", follow_redirects=False)
        assert again.status_code == 200
