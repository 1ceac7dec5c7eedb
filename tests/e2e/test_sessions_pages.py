"""The sessions page and the operator console in Chromium, through the nginx and Caddy recipes
as shipped (the stack's): alice signs one of her browsers out, then everywhere else; alice, an
operator (the stack's [admin] allowed_groups = ["admins"]), finds bob by email and ends his
sessions, with the audit line; bob gets 403 at the console. Each page's screenshot goes to
test-artifacts/ (the ones in docs/images/ come from here)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Stack
from tests.process import RELAY

pytestmark = pytest.mark.e2e

PROXIES = ["nginx", "caddy"]
DEVICES = {
    "Firefox 133 on Windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    ),
    "Mobile Safari 17 on iOS": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
    ),
    "Chrome 131 on Mac OS X": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
    ),
}


@pytest.fixture(autouse=True)
def nobody_signed_in(stack: Stack) -> Iterator[None]:
    """Each test starts and ends with no session of alice's or bob's (the stack is shared,
    and a browser sent to a provider it is still signed in at comes back with a new one)."""
    end_all(stack)
    yield
    end_all(stack)


def end_all(stack: Stack) -> None:
    for subject in ("alice", "bob"):
        subprocess.run(
            [
                RELAY,
                "sessions",
                "revoke",
                "--sub",
                subject,
                "--config",
                str(stack.workdir / "relay.toml"),
            ],
            capture_output=True,
            timeout=60,
            check=False,  # 1 when there was none
        )
        assert stack.sessions_of(subject) == 0


def app_url(stack: Stack, proxy: str) -> str:
    return stack.app_url if proxy == "nginx" else stack.caddy_url


@contextmanager
def signed_in(browser: Any, stack: Stack, proxy: str, account: str, device: str) -> Iterator[Any]:
    """A browser profile of its own, sending ``device``'s User-Agent, signed in as
    ``account`` by opening the app through ``proxy``."""
    context = browser.new_context(
        ignore_https_errors=True, user_agent=DEVICES[device], viewport={"width": 420, "height": 900}
    )
    try:
        page = context.new_page()
        page.goto(app_url(stack, proxy) + "/")
        page.wait_for_url(stack.issuer + "/interaction/**")
        page.fill("input[name=login]", account)
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        page.wait_for_url(stack.issuer + "/interaction/**")  # consent
        page.click("button[type=submit]")
        page.wait_for_url(app_url(stack, proxy) + "/")
        assert page.inner_text("#user") == account
        yield page
    finally:
        context.close()


def sent_to_sign_in(page: Any, stack: Stack, proxy: str) -> bool:
    """Whether the browser's next load of the app goes to the provider. (Where it ends
    depends on the provider: still signed in there, it sends the browser straight back
    with a new code, as oidc-provider does here.)"""
    asked: list[str] = []

    def seen(request: Any) -> None:
        asked.append(request.url)

    page.on("request", seen)
    try:
        page.goto(app_url(stack, proxy) + "/")
        page.wait_for_load_state()
    finally:
        page.remove_listener("request", seen)
    return any(url.startswith(stack.issuer + "/") for url in asked)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("proxy", PROXIES)
def test_alice_signs_her_other_browser_out(browser: Any, stack: Stack, proxy: str) -> None:
    laptop_ua, phone_ua = "Firefox 133 on Windows", "Mobile Safari 17 on iOS"
    with (
        signed_in(browser, stack, proxy, "alice", laptop_ua) as laptop,
        signed_in(browser, stack, proxy, "alice", phone_ua) as phone,
    ):
        laptop.goto(stack.public_url + "/sessions")
        assert laptop.title() == "Your sessions"
        rows = laptop.locator("ul.sessions > li")
        assert rows.count() == 2
        assert laptop.locator("li[aria-current] h2").inner_text().startswith(laptop_ua)
        assert laptop.locator("li:not([aria-current]) h2").inner_text() == phone_ua
        if proxy == "nginx":
            shot(laptop, "sessions-page")
        laptop.get_by_role("button", name=f"Sign out this device: {phone_ua}").click()
        laptop.wait_for_url(stack.public_url + "/sessions")
        assert laptop.locator("ul.sessions > li").count() == 1
        assert sent_to_sign_in(phone, stack, proxy)
        assert not sent_to_sign_in(laptop, stack, proxy)  # this one stays signed in


@pytest.mark.parametrize("proxy", PROXIES)
def test_sign_out_everywhere_else(browser: Any, stack: Stack, proxy: str) -> None:
    devices = list(DEVICES)
    with (
        signed_in(browser, stack, proxy, "alice", devices[0]) as first,
        signed_in(browser, stack, proxy, "alice", devices[1]) as second,
        signed_in(browser, stack, proxy, "alice", devices[2]) as third,
    ):
        second.goto(stack.public_url + "/sessions")
        assert second.locator("ul.sessions > li").count() == 3
        second.get_by_role("button", name="Sign out everywhere else").click()
        second.wait_for_url(stack.public_url + "/sessions")
        assert second.locator("ul.sessions > li").count() == 1
        assert [sent_to_sign_in(p, stack, proxy) for p in (first, third)] == [True, True]
        assert not sent_to_sign_in(second, stack, proxy)


@pytest.mark.parametrize("proxy", PROXIES)
def test_an_operator_finds_bob_by_email_and_ends_his_sessions(
    browser: Any, stack: Stack, proxy: str
) -> None:
    with (
        signed_in(browser, stack, proxy, "alice", "Chrome 131 on Mac OS X") as alice,
        signed_in(browser, stack, proxy, "bob", "Firefox 133 on Windows") as bob,
    ):
        bob.goto(stack.public_url + "/console")
        assert bob.title() == "Not allowed"  # bob is not in "admins"
        if proxy == "nginx":
            shot(bob, "console-not-allowed")

        alice.goto(stack.public_url + "/console")
        assert alice.title() == "Operator console"
        alice.fill("input[name=q]", "bob@example.com")
        alice.get_by_role("button", name="Find").click()
        alice.wait_for_url(stack.public_url + "/console?q=bob%40example.com")
        assert alice.locator("h2", has_text="bob").count() == 1
        if proxy == "nginx":
            shot(alice, "console")
        alice.get_by_role("button", name="End the session of bob").click()
        assert alice.title() == "End sessions?"
        if proxy == "nginx":
            shot(alice, "console-confirm")
        assert stack.sessions_of("bob") >= 1  # asking ends nothing
        alice.get_by_role("button", name="End", exact=True).click()
        alice.wait_for_url(stack.public_url + "/console?q=bob%40example.com")
        assert stack.sessions_of("bob") == 0
        assert sent_to_sign_in(bob, stack, proxy)

        assert stack.relay is not None
        audits = [e for e in stack.relay.collect() if e.get("event") == "audit.sessions_ended"]
        assert audits, "no audit line"
        last = audits[-1]
        assert (last["via"], last["by"], last["subjects"]) == (
            "console",
            "alice@example.com",
            ["bob"],
        )
        assert last["ended"] >= 1 and last["source"] == "127.0.0.1"


def test_the_signed_out_page(browser: Any, stack: Stack) -> None:
    """After a sign-out through the provider's logout, the relay's page says so."""
    with signed_in(browser, stack, "nginx", "alice", "Firefox 133 on Windows") as page:
        page.goto(stack.public_url + "/logout")
        page.click("button[type=submit]")
        page.wait_for_url(stack.issuer + "/session/end**")
        page.click("button[value=yes]")
        page.wait_for_url(stack.signed_out_url)
        assert page.title() == "You are signed out"
        assert page.get_by_role("link", name="Sign in again").count() == 1
        shot(page, "signed-out")
