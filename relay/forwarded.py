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
class AddressSet:
    """Addresses and CIDR ranges from the config: the trusted proxies, the metrics readers."""

    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AddressSet:
        return cls(tuple(ipaddress.ip_network(e, strict=False) for e in entries))

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.ip_address(str(address))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def from_trusted_proxy(request: Request, proxies: AddressSet) -> bool:
    return request.client is not None and request.client.host in proxies


def original_url(request: Request, proxies: AddressSet) -> str | None:
    """The URL the browser asked the proxy for, when a trusted proxy told us; else None."""
    if not from_trusted_proxy(request, proxies):
        return None
    proto = _first(request.headers.get("x-forwarded-proto"))
    host = _first(request.headers.get("x-forwarded-host"))
    uri = request.headers.get("x-forwarded-uri", "/")
    if proto not in ("http", "https") or not host or not uri.startswith("/"):
        return None
    return f"{proto}://{host}{uri}"


def client_address(request: Request, proxies: AddressSet) -> str:
    """The address of the client, seen through trusted proxies: the right-most address in
    X-Forwarded-For that is not a trusted proxy (left of it, anyone can write anything)."""
    peer = request.client.host if request.client else "unknown"
    if not from_trusted_proxy(request, proxies):
        return peer
    chain = [a.strip() for a in request.headers.get("x-forwarded-for", "").split(",") if a.strip()]
    for entry in reversed(chain):
        try:
            address = str(ipaddress.ip_address(entry))
        except ValueError:
            return peer  # a mangled header: count the proxy itself, not a made-up name
        if address not in proxies:
            return address
    return chain[0] if chain else peer


def original_method(request: Request, proxies: AddressSet) -> str:
    if from_trusted_proxy(request, proxies):
        forwarded = request.headers.get("x-forwarded-method")
        if forwarded:
            return forwarded.upper()
    return request.method


def _first(value: str | None) -> str | None:
    # Chained proxies append: "https, http". The first is what the browser used.
    if value is None:
        return None
    return value.split(",")[0].strip() or None
