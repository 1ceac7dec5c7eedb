"""Forwarded hosts read as the proxies route them (RFC 9110 §7.2: uri-host [":" port], where
uri-host is an IP-literal, an IPv4 address or a reg-name), and nothing read any other way."""

from __future__ import annotations

import pytest

from relay.hosts import Host, parse_host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app.example.com", Host("app.example.com")),
        ("App.Example.COM", Host("app.example.com")),
        ("app.example.com:8443", Host("app.example.com", 8443)),
        ("app.example.com.", Host("app.example.com")),  # the DNS root's dot
        ("app.example.com.:443", Host("app.example.com", 443)),
        ("127.0.0.1:8080", Host("127.0.0.1", 8080)),
        ("localhost", Host("localhost")),
        ("my_host.internal", Host("my_host.internal")),
        ("[::1]", Host("[::1]")),
        ("[::1]:8443", Host("[::1]", 8443)),
        ("[2001:DB8:0:0::1]:443", Host("[2001:db8::1]", 443)),
    ],
)
def test_plain_hosts_read(text: str, expected: Host) -> None:
    """A name or address with at most one port reads as that host, lowercased, without the
    root's dot, an IPv6 address in its compressed form."""
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "app.example.com:1:2",  # nginx routes this as app.example.com
        "app.example.com:x:y",
        "app.example.com:443:",
        "app.example.com:",
        "app.example.com:x",
        "app.example.com:65536",
        "app.example.com:0",
        "app.example.com:+443",
        "[app.example.com]",  # Caddy routes this as app.example.com
        "[app.example.com]:443",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[fe80::1%eth0]",
        "::1",
        "app.example.com, other.example.com",
        "app.example.com,other.example.com",
        " app.example.com",
        "app.example.com ",
        "app..example.com",
        ".app.example.com",
        "-app.example.com",
        "app.example.com/x",
        "user@app.example.com",
        "app.example.com\x00",
        "app.exämple.com",
        "a" * 255,
    ],
)
def test_anything_else_is_unreadable(text: str) -> None:
    """Several values, a second colon, an empty or non-numeric port, a name in brackets,
    spaces, empty labels, paths or userinfo: not a host the relay will guess at."""
    assert parse_host(text) is None


def test_a_url_leaves_out_the_default_port() -> None:
    """nginx's recipe sends the port it listened on: https://app.example.com:443/ is written
    https://app.example.com/, another port stays."""
    assert Host("app.example.com", 443).netloc("https") == "app.example.com"
    assert Host("app.example.com", 80).netloc("https") == "app.example.com:80"
    assert Host("app.example.com", 80).netloc("http") == "app.example.com"
    assert Host("[::1]", 8443).netloc("https") == "[::1]:8443"
