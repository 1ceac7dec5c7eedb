"""Back-Channel Logout with the real provider: signing out at the provider ends the relay's
session, without the browser ever visiting the relay."""

from __future__ import annotations

import httpx2
import pytest

from tests.e2e.conftest import Stack, form, scripted_login

pytestmark = pytest.mark.e2e


def test_signing_out_at_the_provider_ends_the_relay_session(
    stack: Stack, http: httpx2.Client
) -> None:
    """oidc-provider POSTs a logout token to /backchannel-logout when its session ends; the
    relay verifies it and deletes the session, so the next request is sent to log in."""
    before = stack.sessions()
    assert scripted_login(http, stack.app_url + "/headers").status_code == 200
    assert stack.sessions() == before + 1

    # The user signs out at the provider directly (another app's logout, say).
    page = http.get(stack.issuer + "/session/end")
    action, fields = form(page.text)
    done = http.post(str(page.url.join(action)), data=fields | {"logout": "yes"})
    assert done.status_code == 200

    assert stack.sessions() == before
    again = http.get(stack.app_url + "/headers", follow_redirects=False)
    assert again.status_code == 302
    assert stack.relay is not None
    stack.relay.wait_for('"backchannel_logout"')
