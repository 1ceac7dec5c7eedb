"""What a request says about the original one, believed only from trusted proxies.

A proxy doing forward-auth tells us the URL the browser asked for in X-Forwarded-Proto, -Host
and -Uri (and the method in X-Forwarded-Method). From any other peer these headers are
ignored: a client must not steer the return URL or pose as another address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(e, strict=False) for e in entries))

    def trusts(self, request: Request) -> bool:
        if request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in network for network in self.networks)


def original_url(request: Request, proxies: TrustedProxies) -> str | None:
    """The URL the browser asked the proxy for, when a trusted proxy told us; else None."""
    if not proxies.trusts(request):
        return None
    proto = _first(request.headers.get("x-forwarded-proto"))
    host = _first(request.headers.get("x-forwarded-host"))
    uri = request.headers.get("x-forwarded-uri", "/")
    if proto not in ("http", "https") or not host or not uri.startswith("/"):
        return None
    return f"{proto}://{host}{uri}"


def original_method(request: Request, proxies: TrustedProxies) -> str:
    if proxies.trusts(request):
        forwarded = request.headers.get("x-forwarded-method")
        if forwarded:
            return forwarded.upper()
    return request.method


def _first(value: str | None) -> str | None:
    # Chained proxies append: "https, http". The first is what the browser used.
    if value is None:
        return None
    return value.split(",")[0].strip() or None
