"""A host as proxies route on it: the one reading of ``name[:port]`` that the relay believes.

A forwarded host keys the per-app rules ([access] hosts), so it must name the app the proxy
actually routed to. Proxies read a Host header leniently and each in its own way: nginx routes
``app.example.com:1:2`` as app.example.com (the text before the first colon), Caddy routes
``[app.example.com]`` as app.example.com (brackets stripped). A lenient reading here would see
another host than the proxy did and skip that host's rules. So only a plain spelling is read:
a DNS name or IPv4 address, or an IPv6 address in brackets, then at most one ``:port``.
Anything else is unreadable, and callers refuse it where a host rule could apply.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Labels of letters, digits, "-" and "_" (seen in internal names; nginx accepts them), joined
# by single dots; one final dot (the DNS root) allowed. Matched after lowercasing.
_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Host:
    """A host read the one way: ``name`` lowercase without the DNS root's dot (an IPv6
    address compressed, in brackets), ``port`` when one was given."""

    name: str
    port: int | None = None

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"

    def netloc(self, scheme: str) -> str:
        """For a URL: the port left out when it is the scheme's default."""
        return self.name if self.port == _DEFAULT_PORTS.get(scheme) else str(self)


def parse_host(text: str) -> Host | None:
    """``name[:port]`` or ``[ipv6][:port]`` as a Host; None for anything else: several values
    (a comma), empty parts, a second colon, brackets around a name, spaces, a port past
    65535, a name over 253 characters."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or "%" in inside:  # a zone id names an interface, not a host
            return None
        try:
            name = f"[{ipaddress.IPv6Address(inside).compressed}]"
        except ValueError:
            return None
    else:
        name, colon, port_text = text.partition(":")
        rest = colon + port_text
        name = name.lower()
        if len(name) > 254 or not _NAME.fullmatch(name):
            return None
        name = name.removesuffix(".")
    if not rest:
        return Host(name)
    if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
        return None
    port = int(rest[1:])
    return Host(name, port) if 0 < port <= 65535 else None
