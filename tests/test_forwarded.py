"""Who the client is, seen through trusted proxies: X-Forwarded-For walked from the right
(every field line of it, in order), X-Real-IP when that is all a trusted proxy sends, and
nobody in particular when it sends neither."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.requests import Request

from relay.crypto import hash_id
from relay.forwarded import AddressSet, client_address, is_navigation

PROXIES = AddressSet.parse(["127.0.0.1/32", "10.0.0.0/8"])
TOKEN = "admin-token-for-the-tests-0123456789-abcdef"
NAVIGATE = ("accept", "text/html")
# What HAProxy's `option forwardfor` sends on: the client's own line first, then its own.
FORGED_FIRST_LINE = [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-for", "203.0.113.9")]


def request(peer: str, method: str = "GET", **headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return raw_request(peer, raw, method)


def raw_request(peer: str, raw: list[tuple[bytes, bytes]], method: str = "GET") -> Request:
    scope = {"type": "http", "method": method, "headers": raw, "client": (peer, 5000)}
    return Request(scope)


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("203.0.113.1", {"X_Forwarded_For": "198.51.100.1"}, "203.0.113.1"),  # untrusted peer
        ("127.0.0.1", {"X_Forwarded_For": "198.51.100.1"}, "198.51.100.1"),
        ("127.0.0.1", {"X_Forwarded_For": "6.6.6.6, 198.51.100.1"}, "198.51.100.1"),  # forged
        ("127.0.0.1", {"X_Forwarded_For": "6.6.6.6, 198.51.100.1, 10.1.2.3"}, "198.51.100.1"),
        ("127.0.0.1", {"X_Forwarded_For": "10.0.0.5, 127.0.0.1"}, "10.0.0.5"),  # all trusted
        ("127.0.0.1", {"X_Forwarded_For": "198.51.100.1:4431"}, "198.51.100.1"),
        ("127.0.0.1", {"X_Forwarded_For": "[2001:db8::1]:443"}, "2001:db8::1"),
        ("127.0.0.1", {"X_Forwarded_For": "2001:db8:0::1"}, "2001:db8::1"),
        ("127.0.0.1", {"X_Forwarded_For": "198.51.100.1, junk"}, None),
        ("127.0.0.1", {"X_Real_IP": "198.51.100.2"}, "198.51.100.2"),
        ("127.0.0.1", {"X_Real_IP": "198.51.100.2", "X_Forwarded_For": "198.51.100.1"},
         "198.51.100.1"),
        ("127.0.0.1", {}, None),  # a trusted proxy that names no client
        ("127.0.0.1", {"X_Forwarded_For": " , "}, None),
    ],
)  # fmt: skip
def test_client_address(peer: str, headers: dict[str, str], client: str | None) -> None:
    """The right-most address a trusted proxy wrote that is not itself a trusted proxy."""
    assert client_address(request(peer, **headers), PROXIES) == client


@pytest.mark.parametrize(
    ("method", "headers", "navigation"),
    [
        ("GET", {}, True),
        ("HEAD", {"Accept": "text/html"}, True),
        ("GET", {"Accept": "application/json"}, False),
        ("GET", {"Accept": "application/json, text/html"}, True),
        ("GET", {"X_Requested_With": "XMLHttpRequest"}, False),
        ("GET", {"Sec_Fetch_Mode": "cors"}, False),
        ("GET", {"Sec_Fetch_Mode": "websocket"}, False),
        ("POST", {"Accept": "text/html"}, False),
        ("GET", {"X_Forwarded_Method": "PUT"}, False),
    ],
)
def test_is_navigation(method: str, headers: dict[str, str], navigation: bool) -> None:
    """Only a browser loading a page is a navigation; the original method counts."""
    assert is_navigation(request("127.0.0.1", method, **headers), PROXIES) is navigation


@pytest.mark.parametrize(
    ("lines", "client"),
    [
        (["127.0.0.1", "198.51.100.1"], "198.51.100.1"),  # the client's line, then the proxy's
        (["6.6.6.6, 127.0.0.1", "198.51.100.1"], "198.51.100.1"),
        (["198.51.100.1", "10.1.2.3"], "198.51.100.1"),  # a second proxy's line after it
        (["6.6.6.6", "198.51.100.1, 10.1.2.3", "10.4.5.6"], "198.51.100.1"),
        (["198.51.100.1", ""], "198.51.100.1"),  # an empty line is no entry
        (["10.0.0.5", "127.0.0.1"], "10.0.0.5"),  # all trusted: the left-most
        (["198.51.100.1", "junk"], None),
    ],
)
def test_every_forwarded_for_line_is_read_in_order(lines: list[str], client: str | None) -> None:
    """Several X-Forwarded-For field lines are one list in order (RFC 9110 §5.3): the walk
    from the right starts at the last line, the one the nearest proxy appended."""
    raw = [(b"x-forwarded-for", line.encode()) for line in lines]
    assert client_address(raw_request("127.0.0.1", raw), PROXIES) == client


def test_several_x_real_ip_lines_name_nobody() -> None:
    """Two X-Real-IP lines (one address each, nothing saying which the proxy wrote) are not
    believed: no client, rather than either one."""
    raw = [(b"x-real-ip", b"127.0.0.1"), (b"x-real-ip", b"198.51.100.2")]
    assert client_address(raw_request("127.0.0.1", raw), PROXIES) is None
    raw = [(b"x-real-ip", b"198.51.100.2")]
    assert client_address(raw_request("127.0.0.1", raw), PROXIES) == "198.51.100.2"


def test_a_forged_first_line_does_not_open_the_admin_api(make_relay: Any) -> None:
    """Behind a proxy that appends its own X-Forwarded-For line, a client that sends
    "127.0.0.1" in its own line is still the address the proxy saw: 404, not the API."""
    with make_relay(peer="127.0.0.1", admin={"token": TOKEN}) as relay:
        bearer = [("authorization", f"Bearer {TOKEN}")]
        forged = relay.get("/admin/stats", headers=[*bearer, *FORGED_FIRST_LINE])
        assert forged.status_code == 404
        loopback = relay.get("/admin/stats", headers=[*bearer, ("x-forwarded-for", "127.0.0.1")])
        assert loopback.status_code == 200  # the proxy's own word for a loopback client


def test_a_forged_first_line_does_not_read_metrics(make_relay: Any) -> None:
    """/metrics is for loopback readers: a client's own "127.0.0.1" line before the proxy's
    does not make it one (404); the proxy naming a loopback client does (200)."""
    with make_relay(peer="127.0.0.1") as relay:
        assert relay.get("/metrics", headers=FORGED_FIRST_LINE).status_code == 404
        assert relay.get("/metrics", headers=[FORGED_FIRST_LINE[0]]).status_code == 200


def test_forwarding_headers_that_name_no_readable_client_do_not_read_metrics(
    make_relay: Any,
) -> None:
    """A trusted proxy whose forwarding headers name no readable client (a mangled entry,
    two X-Real-IP lines) is not taken for a loopback reader: its address stands for all of
    its clients. With no forwarding header at all it is a local scraper (200)."""
    with make_relay(peer="127.0.0.1") as relay:
        for lines in (
            [("x-forwarded-for", "not-an-address")],
            [("x-real-ip", "127.0.0.1"), ("x-real-ip", "203.0.113.9")],
        ):
            assert relay.get("/metrics", headers=lines).status_code == 404, lines
        assert relay.get("/metrics").status_code == 200


def test_login_limits_count_the_address_in_the_proxys_line(make_relay: Any, db: Engine) -> None:
    """A client rotating a forged first X-Forwarded-For line gets no new bucket: every login
    is counted (rate and pending rows) against the address in the proxy's own line."""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "3/minute"}) as relay:
        statuses = []
        for i in range(8):
            relay.cookies.clear()
            lines = [("x-forwarded-for", f"10.9.{i}.1"), ("x-forwarded-for", "203.0.113.7")]
            statuses.append(relay.get("/login", headers=[NAVIGATE, *lines]).status_code)
    assert statuses == [302] * 3 + [429] * 5
    with db.connect() as conn:
        query = text("SELECT client_hash FROM sessions WHERE status = 'pending'")
        assert {row[0] for row in conn.execute(query)} == {hash_id("203.0.113.7")}
