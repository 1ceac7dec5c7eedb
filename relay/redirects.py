"""Where a user may be sent after login: one small pure function, applied at /login and again
at /callback.

Allowed: a path on the relay's own host ("/app/page"), or an absolute http(s) URL whose host is
the relay's own or matches [redirects].allowed_hosts. An entry without a port matches only the
scheme's default port; "*.example.com" matches subdomains of example.com, not example.com.
Anything else (other hosts, protocol-relative "//x", backslashes, control characters, userinfo,
non-ASCII or percent-encoded hosts, other schemes) falls back to the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import structlog

from relay.config import Config

log = structlog.get_logger("relay.redirects")

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_LENGTH = 2048


def safe_redirect(
    rd: str | None, allowed_hosts: Sequence[str], own_origin: str, default: str
) -> str:
    if not rd or len(rd) > MAX_LENGTH or not _plain_text(rd):
        return default
    if rd.startswith("/"):
        # "//host" and "/\host" are read by browsers as another host.
        if rd.startswith(("//", "/\\")):
            return default
        return rd
    try:
        parts = urlsplit(rd)
        port = parts.port
    except ValueError:
        return default
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return default
    if "@" in parts.netloc or "%" in parts.netloc:
        return default
    host = parts.hostname  # lower-cased by urlsplit
    if not host.isascii():
        return default
    effective_port = port if port is not None else _DEFAULT_PORTS[parts.scheme]
    if not (
        _is_own(parts.scheme, host, effective_port, own_origin)
        or any(_matches(entry, host, port, parts.scheme) for entry in allowed_hosts)
    ):
        return default
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, parts.fragment))


def return_url(rd: str | None, config: Config) -> str:
    """safe_redirect with the relay's own settings; a refused rd is said, not silently
    dropped (a legitimate app missing from allowed_hosts shows up here)."""
    default = config.default_redirect
    chosen = safe_redirect(rd, config.redirects.allowed_hosts, config.server.origin, default)
    if rd and chosen == default and rd != default:
        log.info(
            "login.rd_refused",
            rd=rd[:200],  # the client's text: only its start
            using=default,
            hint="add the host to redirects.allowed_hosts if it is yours",
        )
    return chosen


def _plain_text(value: str) -> bool:
    """Printable ASCII with no backslash: what a URL we hand to Location may contain."""
    return value.isascii() and value.isprintable() and "\\" not in value and " " not in value


def _is_own(scheme: str, host: str, port: int, own_origin: str) -> bool:
    own = urlsplit(own_origin)
    own_port = own.port if own.port is not None else _DEFAULT_PORTS.get(own.scheme, 0)
    return (scheme, host, port) == (own.scheme, own.hostname, own_port)


def _matches(entry: str, host: str, port: int | None, scheme: str) -> bool:
    pattern, _, pattern_port = entry.partition(":")
    if pattern_port:
        if port != int(pattern_port):
            return False
    elif port is not None and port != _DEFAULT_PORTS[scheme]:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern
