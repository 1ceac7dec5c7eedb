"""Property-based: whatever a client sends to any route — query string, headers, cookies —
the relay answers without a 5xx, and no session exists without a valid ID token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from relay.crypto import new_id

ROUTES = [
    ("GET", "/"),
    ("GET", "/login"),
    ("GET", "/callback"),
    ("GET", "/auth"),
    ("HEAD", "/auth"),
    ("GET", "/auth/redirect"),
    ("GET", "/userinfo"),
    ("GET", "/logout"),
    ("POST", "/logout"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
]
PARAMS = ["rd", "state", "code", "error", "error_description", "iss", "session_state", "x"]
HEADERS = [
    "accept",
    "origin",
    "sec-fetch-site",
    "sec-fetch-mode",
    "x-requested-with",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-request-id",
    "referer",
    "user-agent",
]
COOKIES = ["__Host-relay_session", "__Host-relay_session_login", "relay_session", "other"]

# What an HTTP client can put in a header: printable ASCII and tab, no CR/LF.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
any_text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["", "/", "//evil.example", "https://app.test/", "\\\\x", new_id()]),
)
cookie_value = st.one_of(
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";,"), max_size=100
    ),
    st.just(new_id()),
)

request_parts = st.fixed_dictionaries(
    {
        "route": st.sampled_from(ROUTES),
        "params": st.dictionaries(st.sampled_from(PARAMS), any_text, max_size=5),
        "headers": st.dictionaries(st.sampled_from(HEADERS), header_text, max_size=6),
        "cookies": st.dictionaries(st.sampled_from(COOKIES), cookie_value, max_size=3),
        "body": st.binary(max_size=200),
    }
)


@pytest.fixture
def trusted_relay(make_relay: Any) -> Iterator[TestClient]:
    """One relay for all examples, reached through a trusted proxy address, with a pending
    login and a real login cookie in the table to aim at."""
    with make_relay(peer="127.0.0.1") as relay:
        relay.get("/login")
        yield relay


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(parts=request_parts)
def test_no_request_gets_a_5xx_or_a_session(
    trusted_relay: TestClient, db: Engine, parts: dict[str, Any]
) -> None:
    """Random query strings, headers, cookies and bodies on every route: never a 5xx, and
    never an active session (nothing here carries a valid ID token)."""
    method, path = parts["route"]
    cookie_header = "; ".join(f"{k}={v}" for k, v in parts["cookies"].items())
    headers = dict(parts["headers"]) | ({"cookie": cookie_header} if cookie_header else {})
    trusted_relay.cookies.clear()
    response = trusted_relay.request(
        method, path, params=parts["params"], headers=headers, content=parts["body"]
    )
    assert response.status_code < 500, (response.status_code, response.text[:300])
    with db.connect() as conn:
        active = conn.execute(text("SELECT count(*) FROM sessions WHERE status = 'active'"))
        assert active.scalar_one() == 0
