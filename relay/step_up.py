"""Step-up: a route that needs a stronger or a fresher sign-in than the session has.

The proxy says so in /auth's query, beside the narrowing rules: ``acr=urn:mfa`` (one of the
comma-separated values must be the session's acr) and ``max_age=300`` (the person
authenticated at the provider at most that many seconds ago: the ID token's auth_time). A
session that falls short gets a 401, so the proxy sends the browser to log in, and that login
asks the provider for exactly the same (acr_values, max_age: OIDC Core 3.1.2.1); the callback
holds the ID token to it (3.1.3.7 (12), (13)) and the new session replaces the browser's old
one. An API caller's token that falls short gets RFC 9470's
``insufficient_user_authentication`` challenge.

Pure: a query and claims in, a verdict out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

QUERY_ACR = "acr"
QUERY_MAX_AGE = "max_age"
FOREVER = 2**62  # the deadline of a verdict that time does not change
# RFC 6749 A.1-style characters: what an acr value may hold here (it is echoed to the
# provider, and to a client in a WWW-Authenticate header).
_ACR = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,255}$")


@dataclass(frozen=True)
class Demand:
    acr: tuple[str, ...] = ()
    max_age: int | None = None
    unreadable: str | None = None  # a step-up parameter given, and not readable: refuse

    def __bool__(self) -> bool:
        return bool(self.acr) or self.max_age is not None or self.unreadable is not None

    def query(self) -> dict[str, str]:
        """As /login takes it, for the login that satisfies it."""
        asked = {}
        if self.acr:
            asked[QUERY_ACR] = ",".join(self.acr)
        if self.max_age is not None:
            asked[QUERY_MAX_AGE] = str(self.max_age)
        return asked


NONE = Demand()


def demand(query: str) -> Demand:
    """The step-up a query asks for (``acr`` and ``max_age``, each at most once); NONE
    when it asks for none. A value that does not read (an empty acr, a max_age that is not
    a whole number of seconds, either given twice) is ``unreadable``: the route refuses
    rather than passing as though it asked for nothing."""
    if QUERY_ACR not in query and QUERY_MAX_AGE not in query:
        return NONE  # the common case, without parsing
    acr: tuple[str, ...] = ()
    max_age = None
    seen: set[str] = set()
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in (QUERY_ACR, QUERY_MAX_AGE):
            continue
        if name in seen:
            return Demand(unreadable=name)
        seen.add(name)
        if name == QUERY_ACR:
            acr = tuple(v.strip() for v in value.split(",") if v.strip())
            if not acr or not all(_ACR.match(v) for v in acr):
                return Demand(unreadable=name)
        else:
            if not value.isascii() or not value.isdigit() or len(value) > 9:
                return Demand(unreadable=name)
            max_age = int(value)
    return Demand(acr, max_age)


def deadline(wanted: Demand, claims: Mapping[str, Any], skew: int) -> int:
    """The last second at which these claims satisfy the demand: FOREVER when time does not
    matter, -1 when they never do (the wrong acr, no auth_time)."""
    if wanted.unreadable is not None:
        return -1
    if wanted.acr and claims.get("acr") not in wanted.acr:
        return -1
    if wanted.max_age is None:
        return FOREVER
    auth_time = claims.get("auth_time")
    if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
        return -1
    return int(auth_time) + wanted.max_age + skew


def shortfall(wanted: Demand, claims: Mapping[str, Any], now: int, skew: int) -> str | None:
    """Why these claims do not satisfy the demand now (a reason for the log), or None."""
    if not wanted or now <= deadline(wanted, claims, skew):
        return None
    if wanted.unreadable is not None:
        return "step_up.unreadable"
    if wanted.acr and claims.get("acr") not in wanted.acr:
        return "step_up.acr"
    return "step_up.max_age"
