"""The operator console (/console): for signed-in people [admin] allowed_groups or
allowed_emails admits; counts, find by subject or email, end one or all after asking; every
ending is one audit line; CSRF-safe; off without operators."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import PUBLIC_URL, check, log_lines, sign_in
from tests.provider import TestProvider

COOKIE = "__Host-relay_session"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAME_ORIGIN = {"Origin": PUBLIC_URL}
JSON = {"Accept": "application/json"}
OPERATORS = {"allowed_groups": ["relay-operators"]}


def person(
    relay: TestClient, provider: TestProvider, subject: str, groups: list[str], **claims: Any
) -> str:
    """Sign ``subject`` in (email subject@example.com, verified); the cookie, jar emptied."""
    provider.subject = subject
    provider.profile = {
        "email": f"{subject}@example.com",
        "email_verified": True,
        "groups": groups,
        **claims,
    }
    relay.cookies.clear()
    relay.headers["user-agent"] = FIREFOX
    assert sign_in(relay, provider).status_code == 302
    cookie = relay.cookies[COOKIE]
    relay.cookies.clear()
    return cookie


def as_(relay: TestClient, cookie: str) -> TestClient:
    relay.cookies.clear()
    relay.cookies.set(COOKIE, cookie, domain="relay.test")
    return relay


def passes(relay: TestClient, cookie: str) -> bool:
    return check(as_(relay, cookie)).status_code == 200


@pytest.fixture
def console(make_relay: Callable[..., Any]) -> Iterator[TestClient]:
    with make_relay(admin=OPERATORS) as relay:
        yield relay


def test_the_console_is_off_without_operators(relay: TestClient, provider: TestProvider) -> None:
    """No [admin] allowed_groups or allowed_emails: 404, even for a signed-in person."""
    cookie = person(relay, provider, "alice", ["relay-operators"])
    assert as_(relay, cookie).get("/console").status_code == 404


def test_an_operator_finds_a_user_by_email_and_sees_the_counts(
    console: TestClient, provider: TestProvider
) -> None:
    op = person(console, provider, "olivia", ["relay-operators"])
    person(console, provider, "bob", ["staff"])
    person(console, provider, "bob", ["staff"])
    person(console, provider, "carol", ["staff"])
    found = as_(console, op).get("/console", params={"q": "BOB@example"}, headers=JSON).json()
    assert {s["subject"] for s in found["sessions"]} == {"bob"}
    assert len(found["sessions"]) == 2
    assert found["counts"]["active"] == 4
    assert found["counts"]["signed_in_last_hour"] == 4
    by_subject = as_(console, op).get("/console", params={"q": "carol"}, headers=JSON).json()
    assert [s["subject"] for s in by_subject["sessions"]] == ["carol"]
    page = as_(console, op).get("/console", params={"q": "bob@example.com"})
    assert page.status_code == 200
    assert "End all 2 sessions of bob" in page.text and "Firefox 133 on Windows" in page.text
    assert "carol" not in page.text


def test_search_wildcards_are_text(console: TestClient, provider: TestProvider) -> None:
    """A % or _ in the search matches itself, not every session."""
    op = person(console, provider, "olivia", ["relay-operators"])
    person(console, provider, "bob", ["staff"])
    for query in ("%", "_", "%@example.com", "\\"):
        found = as_(console, op).get("/console", params={"q": query}, headers=JSON).json()
        assert found["sessions"] == [], query


def test_someone_not_an_operator_gets_403(console: TestClient, provider: TestProvider) -> None:
    bob = person(console, provider, "bob", ["staff"])
    page = as_(console, bob).get("/console")
    assert page.status_code == 403
    assert "Not allowed" in page.text
    assert as_(console, bob).get("/console/end", params={"sub": "bob"}).status_code == 403
    response = as_(console, bob).post("/console/end", data={"sub": "bob"}, headers=SAME_ORIGIN)
    assert response.status_code == 403
    assert passes(console, bob)


def test_not_signed_in_a_browser_is_sent_to_sign_in(console: TestClient) -> None:
    page = console.get("/console", headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 302
    assert page.headers["location"] == f"{PUBLIC_URL}/login?rd=https%3A%2F%2Frelay.test%2Fconsole"
    assert console.get("/console", headers=JSON).status_code == 401


def test_ending_all_of_a_users_sessions_asks_first_then_ends_them_with_an_audit_line(
    console: TestClient, provider: TestProvider, log_stream: io.StringIO
) -> None:
    op = person(console, provider, "olivia", ["relay-operators"])
    bob1 = person(console, provider, "bob", ["staff"])
    bob2 = person(console, provider, "bob", ["staff"])
    carol = person(console, provider, "carol", ["staff"])
    asked = as_(console, op).get("/console/end", params={"sub": "bob", "q": "bob"})
    assert asked.status_code == 200
    assert "End all 2 sessions of <strong>bob</strong>?" in asked.text
    assert passes(console, bob1) and passes(console, bob2)  # asking ends nothing
    console.headers["x-forwarded-for"] = "203.0.113.9"  # not from a trusted proxy: ignored
    done = as_(console, op).post(
        "/console/end", data={"sub": "bob", "q": "bob"}, headers=SAME_ORIGIN
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"{PUBLIC_URL}/console?q=bob"
    assert [passes(console, c) for c in (bob1, bob2, carol, op)] == [False, False, True, True]
    [audit] = [e for e in log_lines(log_stream) if e["event"] == "audit.sessions_ended"]
    assert (audit["via"], audit["by"], audit["source"]) == (
        "console",
        "olivia@example.com",
        "198.51.100.7",
    )
    assert (audit["subjects"], audit["ended"], audit["asked"]) == (["bob"], 2, "bob")


def test_ending_one_session_by_its_id(console: TestClient, provider: TestProvider) -> None:
    op = person(console, provider, "olivia", ["relay-operators"])
    bob1 = person(console, provider, "bob", ["staff"])
    bob2 = person(console, provider, "bob", ["staff"])
    rows = as_(console, op).get("/console", params={"q": "bob"}, headers=JSON).json()["sessions"]
    response = as_(console, op).post(
        "/console/end", data={"session": rows[0]["id"]}, headers={**SAME_ORIGIN, **JSON}
    )
    assert response.json() == {"ended": 1}
    assert sorted([passes(console, bob1), passes(console, bob2)]) == [False, True]


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Origin": "null", "Sec-Fetch-Site": "cross-site"}, {}],
    ids=["other-origin", "null-cross-site", "none"],
)
def test_a_cross_origin_post_ends_nothing(
    console: TestClient, provider: TestProvider, headers: dict[str, str]
) -> None:
    op = person(console, provider, "olivia", ["relay-operators"])
    bob = person(console, provider, "bob", ["staff"])
    response = as_(console, op).post("/console/end", data={"sub": "bob"}, headers=headers)
    assert response.status_code == 403
    assert passes(console, bob)


def test_operators_by_verified_email(
    make_relay: Callable[..., Any], provider: TestProvider
) -> None:
    """allowed_emails admits that address only when the provider says it is verified."""
    with make_relay(admin={"allowed_emails": ["Olivia@Example.com"]}) as relay:
        op = person(relay, provider, "olivia", [])
        assert as_(relay, op).get("/console").status_code == 200
        unverified = person(relay, provider, "olivia", [], email_verified=False)
        assert as_(relay, unverified).get("/console").status_code == 403


def test_values_from_the_provider_and_the_browser_are_escaped(
    console: TestClient, provider: TestProvider
) -> None:
    op = person(console, provider, "olivia", ["relay-operators"])
    console.headers["user-agent"] = "<script>alert(1)</script>/1.0"
    provider.subject = "<b>mallory</b>"
    provider.profile = {"email": "m@example.com", "email_verified": True, "groups": []}
    console.cookies.clear()
    sign_in(console, provider)
    page = as_(console, op).get("/console", params={"q": "m@example.com"}).text
    assert "<b>" not in page and "<script>" not in page
    assert "&lt;b&gt;mallory&lt;/b&gt;" in page
    asked = as_(console, op).get("/console/end", params={"sub": "<b>mallory</b>"}).text
    assert "<b>mallory" not in asked
