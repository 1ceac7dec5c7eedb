"""A person in headless Chromium: the whole path through nginx, the relay and the real
provider, a relay restart on PostgreSQL, and the sign-out."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from relay.crypto import hash_id
from tests.e2e.conftest import ACCOUNT, ARTIFACTS, Stack

pytestmark = pytest.mark.e2e


def sign_in(page: Any, stack: Stack) -> None:
    """From the protected app, through the provider's login and consent, back to the app."""
    page.goto(stack.app_url + "/")
    page.wait_for_url(stack.issuer + "/interaction/**")
    page.fill("input[name=login]", ACCOUNT)
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(stack.issuer + "/interaction/**")  # the consent page
    page.click("button[type=submit]")
    page.wait_for_url(stack.app_url + "/")


def test_a_person_signs_in_survives_a_restart_and_signs_out(
    stack: Stack, context: Any, browser: Any
) -> None:
    """Open the protected app → provider login form → consent → back through /callback → the
    app shows the email; the relay restarts and the browser stays signed in; a second profile
    is not signed in; signing out ends the session at the relay and at the provider."""
    page = context.new_page()
    before = stack.sessions_of(ACCOUNT)  # other tests of the stack may have left theirs
    sign_in(page, stack)
    assert page.inner_text("#email") == "alice@example.com"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "signed-in.png"))
    assert stack.sessions_of(ACCOUNT) == before + 1

    # The cookie as the browser holds it.
    [session] = [c for c in context.cookies() if c["name"] == "__Host-relay_session"]
    assert stack.db is not None
    with stack.db.connect() as conn:  # the refresh-token grant: one was issued and kept, sealed
        query = text("SELECT refresh_token FROM sessions WHERE id_hash = :h")
        refresh = conn.execute(query, {"h": hash_id(session["value"])}).scalar_one()
    assert refresh and refresh.startswith("gAAAAA")  # a Fernet token, not the provider's
    assert session["httpOnly"] is True
    assert session["secure"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/"
    assert session["domain"] == "127.0.0.1"  # host-only
    assert len(session["value"]) == 43

    # Another profile is a stranger: it is sent to the provider's login.
    stranger = browser.new_context(ignore_https_errors=True)
    try:
        other = stranger.new_page()
        other.goto(stack.app_url + "/")
        other.wait_for_url(stack.issuer + "/interaction/**")
        assert other.locator("input[name=login]").count() == 1
    finally:
        stranger.close()

    # A deploy: the relay process is replaced; the signed-in browser does not notice.
    stack.restart_relay()
    page.reload()
    assert page.url == stack.app_url + "/"
    assert page.inner_text("#email") == "alice@example.com"

    # Sign out: the relay's confirmation page, the provider's end-session, and back.
    page.click("#logout")
    page.wait_for_url(stack.public_url + "/logout")
    page.click("button[type=submit]")
    page.wait_for_url(stack.issuer + "/session/end**")
    page.click("button[value=yes]")
    page.wait_for_url(stack.signed_out_url)
    assert "You are signed out" in page.content()
    assert stack.sessions_of(ACCOUNT) == before

    # Signed out at the provider too: the app asks for a login again.
    page.goto(stack.app_url + "/")
    page.wait_for_url(stack.issuer + "/interaction/**")
    assert page.locator("input[name=login]").count() == 1
