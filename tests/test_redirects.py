"""safe_redirect against the project's table of open-redirect payloads (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from relay.redirects import safe_redirect
from tests.conftest import PUBLIC_URL, callback_path, provider_redirect, sign_in
from tests.provider import TestProvider

TABLE = json.loads((Path(__file__).parent / "data" / "redirects.json").read_text())["cases"]
ALLOWED = ["app.example.com", "app.example.com:8443", "*.corp.example"]
DEFAULT = "https://auth.example.com/"


@pytest.mark.parametrize("case", TABLE, ids=[repr(c["rd"])[:60] for c in TABLE])
def test_redirect_table(case: dict[str, Any]) -> None:
    """Each payload is allowed as given or replaced by the default."""
    expect = DEFAULT if case["expect"] == "DEFAULT" else case["expect"]
    assert safe_redirect(case["rd"], ALLOWED, "https://auth.example.com", DEFAULT) == expect


@pytest.mark.parametrize("case", TABLE, ids=[repr(c["rd"])[:60] for c in TABLE])
def test_result_never_splits_a_header(case: dict[str, Any]) -> None:
    """Whatever comes in, what goes to Location is printable ASCII without CR or LF."""
    result = safe_redirect(case["rd"], ALLOWED, "https://auth.example.com", DEFAULT)
    assert result.isascii() and result.isprintable()


def test_none_is_the_default() -> None:
    """No rd at all means the default."""
    assert safe_redirect(None, ALLOWED, "https://auth.example.com", DEFAULT) == DEFAULT


def test_callback_revalidates_the_stored_return_url(
    make_relay: Any, provider: TestProvider
) -> None:
    """An rd allowed at /login but no longer allowed at /callback falls back to the default.

    The allow list changes between the two (a redeploy mid-login): the check runs twice."""
    with make_relay(redirects={"allowed_hosts": ["app.test"]}) as relay:
        start = relay.get("/login", params={"rd": "https://app.test/x"})
        login_cookie = relay.cookies["__Host-relay_session_login"]
    path = callback_path(provider_redirect(provider, start.headers["location"]))
    with make_relay(redirects={"allowed_hosts": []}) as relay:
        relay.cookies.set("__Host-relay_session_login", login_cookie, domain="relay.test")
        done = relay.get(path)
    assert done.status_code == 302
    assert done.headers["location"] == PUBLIC_URL + "/"


@pytest.mark.parametrize("rd", ["https://evil.example/", "//evil.example", "/\\evil.example"])
def test_login_never_redirects_off_allowed_hosts(
    relay: TestClient, provider: TestProvider, rd: str
) -> None:
    """End to end: a hostile rd ends at the default after a real login."""
    assert sign_in(relay, provider, rd=rd).headers["location"] == PUBLIC_URL + "/"
