"""Who the client is, seen through trusted proxies: X-Forwarded-For walked from the right,
X-Real-IP when that is all a trusted proxy sends, and nobody in particular when it sends
neither."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from relay.forwarded import AddressSet, client_address, is_navigation

PROXIES = AddressSet.parse(["127.0.0.1/32", "10.0.0.0/8"])


def request(peer: str, method: str = "GET", **headers: str) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
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
