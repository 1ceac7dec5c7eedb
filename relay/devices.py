"""A browser's User-Agent as a person recognises their device: "Firefox 133 on Windows".

Read with ua-parser (the maintained uap-core rules), not patterns of our own; only for the
pages and listings that show sessions, never on the hot path. The first parse loads the rules
(about a quarter of a second); results are kept for the User-Agents seen most.
"""

from __future__ import annotations

from functools import lru_cache

from ua_parser import parse

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
