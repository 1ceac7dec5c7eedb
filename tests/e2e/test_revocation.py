"""An operator revokes a signed-in person with `relay sessions revoke`: through the real nginx
recipe, the real provider and Chromium, the browser's next page load no longer reaches the app
on that session."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from sqlalchemy import text

from relay.crypto import hash_id
from tests.e2e.conftest import ACCOUNT, Stack
from tests.e2e.test_browser import sign_in
from tests.process import RELAY

pytestmark = pytest.mark.e2e

COOKIE = "__Host-relay_session"
BOUND = 1.0  # seconds: the documented revocation bound


def session_cookie(context: Any) -> str:
    [value] = [c["value"] for c in context.cookies() if c["name"] == COOKIE]
    return str(value)


def redirect_chain(response: Any) -> list[str]:
    """Every URL the browser asked for to get ``response``, first to last."""
    urls = []
    request = response.request
    while request is not None:
        urls.append(request.url)
        request = request.redirected_from
    return urls[::-1]


def test_a_revoked_person_is_sent_to_log_in_again(stack: Stack, context: Any) -> None:
    """alice signs in in Chromium; `relay sessions revoke --sub alice` (the stack's relay
    config) ends her session; nginx refuses it within 1 s, and the browser's next
    load of the app is sent to the provider for a new login instead of being served on the
    revoked session."""
    page = context.new_page()
    sign_in(page, stack)
    assert page.inner_text("#email") == "alice@example.com"
    revoked_cookie = session_cookie(context)
    assert stack.relay is not None
    command = [RELAY, "sessions", "revoke", "--sub", ACCOUNT, "--config", str(stack.relay.config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ended ") and not done.stdout.startswith("ended 0 "), done.stdout
    revoked = time.monotonic()

    # The app through nginx with the browser's cookie, polled: refused within the bound (an
    # API call, so nginx's auth_request turns the relay's 401 into a 401 of its own).
    with stack.client() as http:
        headers = {"cookie": f"{COOKIE}={revoked_cookie}", "accept": "application/json"}
        while (status := http.get(stack.app_url + "/headers", headers=headers).status_code) == 200:
            assert time.monotonic() - revoked < BOUND, "the revoked session still passes"
        assert status == 401

    response = page.reload()
    chain = redirect_chain(response)
    # nginx answers the app's URL with the relay's /login (its error_page, inside nginx): a
    # redirect to the provider's authorization endpoint, a new login.
    assert chain[0] == stack.app_url + "/"
    assert chain[1].startswith(stack.issuer + "/auth?client_id=oidc-relay&request_uri="), chain
    # The provider still has alice's own session, so it may send her straight back with a new
    # relay session, or ask her to log in: either way the revoked one served nothing.
    if page.url.startswith(stack.app_url):
        assert session_cookie(context) != revoked_cookie
    else:
        assert page.url.startswith(stack.issuer + "/interaction/")
    assert stack.db is not None
    with stack.db.connect() as conn:
        query = text("SELECT count(*) FROM sessions WHERE id_hash = :h")
        assert conn.execute(query, {"h": hash_id(revoked_cookie)}).scalar_one() == 0
