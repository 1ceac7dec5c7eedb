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

from relay.hosts import parse_host
from relay.pages import wants_json

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
    proto = first_value(request.headers.get("x-forwarded-proto"))
    host = parse_host(first_value(request.headers.get("x-forwarded-host")) or "")
    uri = request.headers.get("x-forwarded-uri", "/")
    if proto not in ("http", "https") or host is None or not uri.startswith("/"):
        return None
    return f"{proto}://{host.netloc(proto)}{uri}"


def forwarded_host(request: Request, proxies: AddressSet) -> str | None:
    """The host the proxy routed on, as it sent it (X-Forwarded-Host), from a trusted proxy.

    Every field line, comma-joined (RFC 9110 §5.3): a second line or value makes the host
    unreadable (relay/hosts.py), never quietly the first or the last of them, since a client
    can send its own line before or after the proxy's."""
    if not from_trusted_proxy(request, proxies):
        return None
    lines = request.headers.getlist("x-forwarded-host")
    return ",".join(lines) if lines else None


def client_address(request: Request, proxies: AddressSet) -> str | None:
    """The address of the client, seen through trusted proxies; None when a trusted proxy
    did not say.

    X-Forwarded-For is walked from the right past trusted proxies: each proxy appends the
    address it saw, so the first untrusted entry is the last one a trusted proxy wrote, and
    anything left of it is the client's own text. A trusted proxy that sends only X-Real-IP
    (its single view of the client) is believed too. A trusted proxy that names no client, or
    a mangled entry where the client should be, gives None: counting the proxy itself would
    put all its clients in one bucket.
    """
    peer = request.client.host if request.client else None
    if not from_trusted_proxy(request, proxies):
        return peer
    chain = [a for a in ",".join(forwarded_for(request)).split(",") if a.strip()]
    if not chain:
        # X-Real-IP is one address, not a list. Two field lines (the client's own and its
        # proxy's, say) name two clients with nothing to say which one the proxy wrote:
        # believe neither rather than pick one.
        real_ip = request.headers.getlist("x-real-ip")
        chain = real_ip if len(real_ip) == 1 else [""]
    address = None
    for entry in reversed(chain):
        address = _address(entry)
        if address is None or address not in proxies:
            return address
    return address  # every hop a trusted proxy: the left-most is the client


def forwarded_for(request: Request) -> list[str]:
    """Every X-Forwarded-For field line, in the order received.

    RFC 9110 §5.3: field lines of one name are one list, in order. A proxy may append a line
    of its own rather than extend the client's (HAProxy's ``option forwardfor`` does): read
    only the first, and the client's own text is all there is to read.
    """
    return request.headers.getlist("x-forwarded-for")


def caller_address(request: Request, proxies: AddressSet) -> str | None:
    """Who is calling, for an address gate (/metrics, the admin API): the client the
    forwarding headers name (``client_address``), or the peer itself when there are none at
    all (a scraper or curl on the relay's host). Forwarding headers that name no readable
    client give None, not the peer: a trusted proxy's own address stands for all its clients.
    """
    headers = request.headers
    if "x-forwarded-for" in headers or "x-real-ip" in headers:
        return client_address(request, proxies)
    return request.client.host if request.client else None


def _address(entry: str) -> str | None:
    """An address in canonical form; an entry with a port ("1.2.3.4:80", "[::1]:80") too."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return None


def original_method(request: Request, proxies: AddressSet) -> str:
    if from_trusted_proxy(request, proxies):
        forwarded = request.headers.get("x-forwarded-method")
        if forwarded:
            return forwarded.upper()
    return request.method


def is_navigation(request: Request, proxies: AddressSet) -> bool:
    """Whether a browser is loading a page (and may be sent to the provider), as opposed to
    a script, an API client or a form post, which get a 401 to act on instead."""
    headers = request.headers
    if original_method(request, proxies) not in ("GET", "HEAD"):
        return False
    if "x-requested-with" in headers:
        return False
    # An API caller's token (RFC 6750): a browser loading a page sends none.
    if headers.get("authorization", "")[:7].lower() == "bearer ":
        return False
    if headers.get("sec-fetch-mode", "navigate") != "navigate":
        return False
    return not wants_json(request)


def first_value(value: str | None) -> str | None:
    # Chained proxies append: "https, http". The first is what the browser used.
    if value is None:
        return None
    return value.split(",")[0].strip() or None
