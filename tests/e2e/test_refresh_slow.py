"""Refresh against a slow real provider: the npm oidc-provider rotating refresh tokens
strictly (an old one sent again revokes the grant) and answering each refresh after longer
than the relay's provider.timeout. A module of its own: its stack must be built before the
module's browser starts (migrations run their own event loop)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_browser import sign_in
from tests.e2e.test_refresh import TTL, stack

pytestmark = pytest.mark.e2e

SLOW = 2.5  # seconds the slow provider holds a refresh's answer: above provider.timeout


@pytest.fixture(scope="module")
def slow_rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack as test_refresh's, with a provider that rotates refresh tokens strictly
    (reusing one revokes the grant) and answers refreshes SLOW seconds after doing them, and
    a relay with provider.timeout at 1 s (and retries after 1 s, so a lost token shows at
    once)."""
    provider_env = {"ROTATE_REFRESH_TOKENS": "1", "REFRESH_ANSWER_DELAY_MS": str(int(SLOW * 1000))}
    relay_env = {"RELAY_PROVIDER__TIMEOUT": "1s", "RELAY_REFRESH__RETRY_INTERVAL": "1s"}
    with stack(tmp_path_factory.mktemp("e2e-slow"), provider_env, relay_env) as s:
        yield s


def test_a_slow_provider_rotating_strictly_logs_nobody_out(
    slow_rotating: Stack, context: Any
) -> None:
    """The provider answers each refresh SLOW seconds after rotating the refresh token (the
    relay's provider.timeout is 1 s) and revokes the grant if an old one comes back: the page
    keeps loading, signed in, through two refreshes; each rotated token was stored (the
    second refresh sent it and succeeded), and no refresh failed."""
    stack = slow_rotating
    page = context.new_page()
    sign_in(page, stack)
    deadline = time.monotonic() + 4 * (TTL + SLOW)
    assert stack.relay is not None
    refreshes = 0
    while refreshes < 2:
        seen = [
            (e["event"], e.get("reason")) for e in stack.relay.events() if "refresh" in e["event"]
        ]
        assert time.monotonic() < deadline, f"no second refresh in four slow lifetimes: {seen}"
        page.reload()
        assert page.url == stack.app_url + "/"
        assert page.inner_text("#email") == "alice@example.com"
        refreshes = sum(e["event"] == "refresh.succeeded" for e in stack.relay.collect())
    events = [e["event"] for e in stack.relay.collect() if e["event"].startswith("refresh.")]
    assert "refresh.failed" not in events and "refresh.ambiguous" not in events, events
