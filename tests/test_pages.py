"""Pages a proxy puts in front of the person: the sign-in redirect that still works when a
proxy turns it into a 403 (oauth2-proxy's older nginx form), and the "Not allowed" page the
nginx recipe shows for a 403 from /auth."""

from __future__ import annotations

import html
import re

import pytest
from starlette.testclient import TestClient

from relay import pages
from relay.store.listing import SessionRow
from relay.store.records import SignIn
from tests.conftest import ISSUER, PUBLIC_URL, sign_in
from tests.provider import TestProvider

NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


def test_the_sign_in_redirect_carries_a_way_on_in_its_body(relay: TestClient) -> None:
    """302 with Location, and a page whose refresh and link go to the same place: a browser
    shown it as a 403 (error_page 401 =403 /oauth2/sign_in) still reaches the provider."""
    response = relay.get("/sign_in", headers=NAVIGATE)
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(ISSUER + "/authorize?")
    refresh = re.search(r'<meta http-equiv=refresh content="0;url=([^"]+)">', response.text)
    link = re.search(r'<a href="([^"]+)">Continue to sign in</a>', response.text)
    assert refresh and link
    assert html.unescape(refresh.group(1)) == location == html.unescape(link.group(1))
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_forbidden_page_offers_sign_out_and_the_persons_sessions(
    relay: TestClient, provider: TestProvider
) -> None:
    """Signed in: 403, "Not allowed", links to sign out and to /sessions, for any method
    (nginx hands it the refused request). Not signed in: 403 as well. JSON when asked."""
    sign_in(relay, provider)
    for method in ("GET", "POST", "DELETE"):
        page = relay.request(method, "/forbidden", headers=NAVIGATE)
        assert page.status_code == 403
        assert "<title>Not allowed</title>" in page.text
        assert f'href="{PUBLIC_URL}/logout"' in page.text
        assert f'href="{PUBLIC_URL}/sessions"' in page.text
    asked = relay.get("/forbidden", headers={"Accept": "application/json"})
    assert (asked.status_code, asked.json()["error"]) == (403, "access.forbidden_page")
    relay.cookies.clear()
    assert relay.get("/forbidden", headers=NAVIGATE).status_code == 403


def test_a_device_name_is_escaped_whatever_the_parser_makes_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device text comes from the browser's User-Agent through ua-parser, whose rules
    change with its releases: the row escapes whatever it returns."""
    monkeypatch.setattr(pages, "describe", lambda agent: "<img src=x onerror=alert(1)>")
    row = SessionRow("ab" * 32, "alice", None, "active", 0, 0, 10, SignIn(user_agent="x"))
    html_text = pages.session_items([row], 5, lambda _: pages.Button("/end", "End"))
    assert "<img" not in html_text and "&lt;img src=x onerror=alert(1)&gt;" in html_text
