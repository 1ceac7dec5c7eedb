"""What a session is, in memory: plain records with no I/O (the store reads and writes them,
the cache holds them, the gate and the headers read them)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

ACTIVE = "active"


@dataclass(frozen=True)
class Lifetimes:
    absolute: int
    idle: int
    touch_interval: int

    def expires_at(self, created_at: int, last_accessed_at: int) -> int:
        return min(created_at + self.absolute, last_accessed_at + self.idle)


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str | None
    refresh_token: str | None
    expires_in: int | None = None  # the access token's lifetime, when the provider said


@dataclass(frozen=True)
class SignIn:
    """What a session records about its sign-in, for people to read (the sessions page, the
    console, the CLI): never what decides whether it passes, and never logged."""

    user_agent: str | None = None
    client_address: str | None = None  # as [session] record_address allows
    provider: str | None = None  # the issuer
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: int | None = None


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id_hash: str
    subject: str
    claims: dict[str, Any]
    created_at: int
    last_accessed_at: int
    expires_at: int
    # Unsealed: what a later change may hand to apps. Never in a repr (nor a log line).
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: int | None = None  # None: the provider did not say
    has_refresh_token: bool = False
    # What the forward-auth shortcut worked out for this version of the session (its headers,
    # its verdict per app): kept on it, so it goes when the cache lets the session go, and a
    # new version (a refresh, a new read) starts afresh. A touch is no new version (touched).
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def touched(self, last_accessed_at: int, expires_at: int) -> None:
        """A touch was written: the two times move on, in place, and only forward. The rest
        of this version (claims, memo) still holds, and a cache of 100,000 sessions, touched
        within a minute, does not make 100,000 new objects a minute for the garbage
        collector to walk (benchmarks/users.py)."""
        if last_accessed_at > self.last_accessed_at:
            object.__setattr__(self, "last_accessed_at", last_accessed_at)
            object.__setattr__(self, "expires_at", max(expires_at, self.expires_at))


@dataclass(frozen=True)
class RefreshClaim:
    """What a replica that claimed a session's refresh needs, unsealed (never in a repr)."""

    refresh_token: str = field(repr=False)
    id_token: str | None = field(repr=False)
    nonce: str | None  # the login's, once a refresh has recorded it
    lease_until: int
    # Grants sent before this one and never answered (see models.refresh_unsettled).
    unsettled: int = 0


def shared(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims as the cache keeps them: names, and the strings in lists (groups), interned,
    so that 100,000 sessions hold one copy of "email" and of "all-staff" rather than 100,000
    (about 1 KB less per cached session with ten groups; benchmarks/cache_bytes.py)."""
    return {
        sys.intern(name): (
            [sys.intern(item) if type(item) is str else item for item in value]
            if type(value) is list
            else value
        )
        for name, value in claims.items()
    }
