"""A person's own sessions page (GET /sessions, POST /sessions/end, /sessions/end-others) and
what a session records at sign-in: written from the issue's rules (only one's own sessions,
CSRF-safe, every provider- or browser-controlled value escaped, the address as the privacy
setting allows)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import PUBLIC_URL, check, sign_in
from tests.provider import TestProvider

COOKIE = "__Host-relay_session"
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
LINUX = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
SAME_ORIGIN = {"Origin": PUBLIC_URL}


def browser(relay: TestClient, provider: TestProvider, subject: str, agent: str) -> str:
    """Sign ``subject`` in from a browser sending ``agent``; its session cookie. The client
    is left with no cookies: each test says which browser sends the next request."""
    provider.subject = subject
    provider.profile["email"] = f"{subject}@example.com"
    relay.cookies.clear()
    relay.headers["user-agent"] = agent
    assert sign_in(relay, provider).status_code == 302
    cookie = relay.cookies[COOKIE]
    relay.cookies.clear()
    del relay.headers["user-agent"]
    return cookie


def as_(relay: TestClient, cookie: str) -> TestClient:
    relay.cookies.clear()
    relay.cookies.set(COOKIE, cookie, domain="relay.test")
    return relay


def listed(relay: TestClient, cookie: str) -> list[dict[str, Any]]:
    response = as_(relay, cookie).get("/sessions", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


def passes(relay: TestClient, cookie: str) -> bool:
    status = check(as_(relay, cookie)).status_code
    assert status in (200, 401)
    return status == 200


def test_the_page_lists_this_persons_sessions_only_with_their_devices(
    relay: TestClient, provider: TestProvider
) -> None:
    """Two browsers of alice's and one of bob's: alice's page shows her two, with the
    browser and system of each and hers marked, and nothing of bob's."""
    laptop = browser(relay, provider, "alice", FIREFOX)
    phone = browser(relay, provider, "alice", IPHONE)
    bobs = browser(relay, provider, "bob", LINUX)
    mine = listed(relay, laptop)
    assert sorted(s["device"] for s in mine) == [
        "Firefox 133 on Windows",
        "Mobile Safari 17 on iOS",
    ]
    assert [s["current"] for s in mine if s["device"].startswith("Firefox")] == [True]
    assert {s["subject"] for s in mine} == {"alice"}
    page = as_(relay, phone).get("/sessions")
    assert page.status_code == 200
    assert "Firefox 133 on Windows" in page.text and "Mobile Safari 17 on iOS" in page.text
    assert "This device" in page.text and "Sign out everywhere else" in page.text
    assert "bob" not in page.text and "Chrome" not in page.text
    [bob] = listed(relay, bobs)
    assert bob["device"] == "Chrome 120 on Linux" and bob["current"]


def test_sign_out_this_device_ends_that_session_and_not_this_one(
    relay: TestClient, provider: TestProvider
) -> None:
    """ "Sign out this device" on the laptop's row, from the phone: the laptop's next check
    is 401, the phone's still passes, and the page comes back without the laptop."""
    laptop = browser(relay, provider, "alice", FIREFOX)
    phone = browser(relay, provider, "alice", IPHONE)
    [row] = [s for s in listed(relay, phone) if not s["current"]]
    response = as_(relay, phone).post(
        "/sessions/end", data={"session": row["id"]}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303
    assert response.headers["location"] == PUBLIC_URL + "/sessions"
    assert not passes(relay, laptop)
    assert passes(relay, phone)
    assert [s["device"] for s in listed(relay, phone)] == ["Mobile Safari 17 on iOS"]


def test_nobody_ends_another_persons_session_by_naming_it(
    relay: TestClient, provider: TestProvider
) -> None:
    """alice posting bob's session id (as his page would show it) ends nothing."""
    alice = browser(relay, provider, "alice", FIREFOX)
    bobs = browser(relay, provider, "bob", LINUX)
    [bob] = listed(relay, bobs)
    response = as_(relay, alice).post(
        "/sessions/end",
        data={"session": bob["id"]},
        headers={**SAME_ORIGIN, "Accept": "application/json"},
    )
    assert response.json() == {"ended": 0}
    assert passes(relay, bobs)
    assert passes(relay, alice)


def test_sign_out_everywhere_else_keeps_only_this_one(
    relay: TestClient, provider: TestProvider
) -> None:
    """Three browsers: "everywhere else" from one ends the other two; another person's
    session is untouched."""
    first = browser(relay, provider, "alice", FIREFOX)
    second = browser(relay, provider, "alice", IPHONE)
    third = browser(relay, provider, "alice", LINUX)
    bobs = browser(relay, provider, "bob", LINUX)
    response = as_(relay, second).post("/sessions/end-others", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert [passes(relay, c) for c in (first, second, third, bobs)] == [False, True, False, True]


def test_ending_this_devices_own_session_signs_it_out(
    relay: TestClient, provider: TestProvider
) -> None:
    """The row of the browser asking is a sign-out: the session ends and its cookie goes."""
    laptop = browser(relay, provider, "alice", FIREFOX)
    [row] = listed(relay, laptop)
    response = as_(relay, laptop).post(
        "/sessions/end", data={"session": row["id"]}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303
    assert COOKIE not in relay.cookies
    assert not passes(relay, laptop)


@pytest.mark.parametrize("path", ["/sessions/end", "/sessions/end-others"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {},
    ],
    ids=["other-origin", "null-cross-site", "none"],
)
def test_a_cross_origin_post_ends_nothing(
    relay: TestClient, provider: TestProvider, path: str, headers: dict[str, str]
) -> None:
    """A form on another site posting to the page's endpoints: 403, every session stays."""
    laptop = browser(relay, provider, "alice", FIREFOX)
    phone = browser(relay, provider, "alice", IPHONE)
    [row] = [s for s in listed(relay, phone) if not s["current"]]
    response = as_(relay, phone).post(path, data={"session": row["id"]}, headers=headers)
    assert response.status_code == 403
    assert passes(relay, laptop) and passes(relay, phone)


def test_a_malformed_session_id_is_a_400(relay: TestClient, provider: TestProvider) -> None:
    laptop = browser(relay, provider, "alice", FIREFOX)
    for value in ("", "zz", "' OR 1=1 --", "%"):
        response = as_(relay, laptop).post(
            "/sessions/end", data={"session": value}, headers=SAME_ORIGIN
        )
        assert response.status_code == 400
    assert passes(relay, laptop)


def test_markup_from_the_browser_and_the_provider_is_escaped(
    relay: TestClient, provider: TestProvider
) -> None:
    """A User-Agent and claims holding markup come out as text."""
    provider.behaviour.id_token_claims = {"email": '"><img src=x onerror=alert(1)>'}
    hostile = browser(relay, provider, "alice", "<script>alert(1)</script>/1.0 (<b>x</b>)")
    page = as_(relay, hostile).get("/sessions").text
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_not_signed_in_a_browser_goes_to_sign_in_and_back(relay: TestClient) -> None:
    page = relay.get("/sessions", headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 302
    location = urlsplit(page.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query)["rd"] == [PUBLIC_URL + "/sessions"]
    assert relay.get("/sessions", headers={"Accept": "application/json"}).status_code == 401


@pytest.mark.parametrize(
    ("setting", "recorded"),
    [("truncated", "203.0.113.0/24"), ("full", "203.0.113.77"), ("none", None)],
)
def test_the_address_is_recorded_as_the_privacy_setting_allows(
    make_relay: Any, provider: TestProvider, db: Engine, setting: str, recorded: str | None
) -> None:
    """The browser's address, through the trusted proxy, at sign-in: its /24 by default."""
    with make_relay(peer="127.0.0.1", session={"record_address": setting}) as relay:
        relay.headers["x-forwarded-for"] = "203.0.113.77"
        cookie = browser(relay, provider, "alice", FIREFOX)
        [row] = listed(relay, cookie)
    assert row["address"] == recorded
    with db.connect() as conn:
        stored = conn.execute(text("SELECT client_address FROM sessions")).scalar_one()
    assert stored == recorded


def test_an_ipv6_address_is_truncated_to_its_48(make_relay: Any, provider: TestProvider) -> None:
    with make_relay(peer="127.0.0.1") as relay:
        relay.headers["x-forwarded-for"] = "2001:db8:1234:5678::9"
        [row] = listed(relay, browser(relay, provider, "alice", FIREFOX))
    assert row["address"] == "2001:db8:1234::/48"


def test_what_the_provider_said_of_the_sign_in_is_recorded(
    relay: TestClient, provider: TestProvider
) -> None:
    """acr, amr and auth_time from the ID token; the provider's issuer; the User-Agent cut
    to 512 characters. Values of the wrong type are not recorded."""
    provider.behaviour.id_token_claims = {
        "acr": "urn:mfa",
        "amr": ["pwd", "otp", 7],
        "auth_time": 1_700_000_000,
    }
    [row] = listed(relay, browser(relay, provider, "alice", FIREFOX + " " + "x" * 600))
    assert (row["acr"], row["amr"], row["auth_time"]) == ("urn:mfa", ["pwd", "otp"], 1_700_000_000)
    assert row["provider"] == provider.issuer
    assert len(row["user_agent"]) == 512 and row["user_agent"].startswith(FIREFOX)
    provider.behaviour.id_token_claims = {
        "acr": ["not", "a", "string"],
        "amr": "pwd",
        "auth_time": "soon",
    }
    [row] = listed(relay, browser(relay, provider, "bob", FIREFOX))
    assert (row["acr"], row["amr"], row["auth_time"]) == (None, [], None)


def test_after_sign_out_the_browser_lands_on_you_are_signed_out(
    relay: TestClient, provider: TestProvider
) -> None:
    """The provider's logout is asked to send the browser back to the relay's page with
    the state; that page says so and links to sign in again. With a live session the same
    address just shows who is signed in."""
    sign_in(relay, provider)
    response = relay.post("/logout", headers=SAME_ORIGIN)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["post_logout_redirect_uri"] == [PUBLIC_URL + "/"]
    assert query["state"] == ["signed-out"]
    page = relay.get("/", params={"state": "signed-out"})
    assert "You are signed out" in page.text and 'href="https://relay.test/login"' in page.text
    assert "Sign in again" in page.text
    sign_in(relay, provider)
    assert "Signed in" in relay.get("/", params={"state": "signed-out"}).text


def test_a_shortened_id_naming_two_of_ones_sessions_is_a_400(
    relay: TestClient, provider: TestProvider, db: Engine
) -> None:
    """An id shortened so far that it names two of the person's own sessions ends neither
    (a 400, not a crash)."""
    laptop = browser(relay, provider, "alice", FIREFOX)
    with db.begin() as conn:
        row = conn.execute(text("SELECT * FROM sessions WHERE subject = 'alice'")).mappings().one()
        for twin in ("abcdef01" + "0" * 56, "abcdef01" + "1" * 56):
            conn.execute(
                text(
                    "INSERT INTO sessions (id_hash, status, subject, claims, created_at,"
                    " last_accessed_at, expires_at, refresh_unsettled)"
                    " VALUES (:h, 'active', 'alice', :c, :t, :t, :e, 0)"
                ),
                {"h": twin, "c": row["claims"], "t": row["created_at"], "e": row["expires_at"]},
            )
    response = as_(relay, laptop).post(
        "/sessions/end", data={"session": "abcdef01"}, headers=SAME_ORIGIN
    )
    assert response.status_code == 400
    with db.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM sessions WHERE subject = 'alice'"))
        assert left.scalar_one() == 3
