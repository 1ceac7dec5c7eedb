"""The device behind a session: what a session records of the browser that signed in, and
how a person recognises it on the sessions pages ("Firefox 133 on Windows").

User-Agents are read with ua-parser (the maintained uap-core rules), not patterns of our own;
only for the pages and listings that show sessions, never on the hot path. The first parse
loads the rules (about a quarter of a second); results are kept for the User-Agents seen most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from ua_parser import parse

from relay.ratelimit import client_bucket
from relay.store.records import SignIn

UNKNOWN = "Unknown device"


@lru_cache(maxsize=1024)
def describe(user_agent: str | None) -> str:
    """The browser and its version, on the operating system ("Chrome 120 on Linux"), as
    much of it as the User-Agent tells; UNKNOWN when it tells nothing."""
    if not user_agent:
        return UNKNOWN
    found = parse(user_agent)
    browser = found.user_agent
    system = found.os
    parts = []
    if browser is not None and browser.family != "Other":
        parts.append(
            browser.family if browser.major is None else f"{browser.family} {browser.major}"
        )
    if system is not None and system.family != "Other":
        parts.append(("on " if parts else "") + system.family)
    return " ".join(parts) or UNKNOWN


@dataclass(frozen=True)
class Browser:
    """The browser finishing a login, as the callback saw it."""

    user_agent: str | None = None
    address: str | None = None  # through trusted proxies (forwarded.client_address)


def recorded(
    browser: Browser,
    claims: Mapping[str, Any],
    issuer: str,
    keep_address: Literal["truncated", "full", "none"],
) -> SignIn:
    """What a session records of its sign-in: the browser, its address as [session]
    record_address allows (truncated: its /24 or /48), the issuer, and what the provider
    said of the authentication where it said it in OIDC Core's form (2: acr a string, amr an
    array of strings, auth_time a number)."""
    address = browser.address
    if address is not None and keep_address != "full":
        address = None if keep_address == "none" else client_bucket(address, 24, 48)
    acr, amr, auth_time = claims.get("acr"), claims.get("amr"), claims.get("auth_time")
    return SignIn(
        user_agent=browser.user_agent,
        client_address=address,
        provider=issuer,
        acr=acr if isinstance(acr, str) else None,
        amr=tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else (),
        auth_time=(
            int(auth_time)
            if isinstance(auth_time, int | float) and not isinstance(auth_time, bool)
            else None
        ),
    )
