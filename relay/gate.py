"""Who may pass: the session behind a cookie, judged by the access rules, on every check that
is not answered by the forward-auth shortcut (endpoints/shortcut.py answers only what this
would answer alike).

The store knows sessions, relay/access.py knows rules; this module knows what a check asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from relay import step_up
from relay.access import Access
from relay.bearer import BearerTokens
from relay.crypto import hash_id, short_hash
from relay.errors import (
    AccessDenied,
    InsufficientAuthentication,
    StepUpRequired,
    TokenRefused,
    Unauthorized,
)
from relay.refresh import Refresher
from relay.store.records import ActiveSession
from relay.store.sessions import Sessions

log = structlog.get_logger("relay.gate")


class Gate:
    def __init__(
        self,
        sessions: Sessions,
        access: Access,
        sign_out_url: str,
        clock: Callable[[], float],
        *,
        refresher: Refresher | None = None,
        bearer: BearerTokens | None = None,
        skew: int = 60,
    ) -> None:
        self.skew = skew  # provider.clock_skew, for a step-up's max_age
        self._sessions = sessions
        self.bearer = bearer  # None: [bearer] is off
        self.access = access
        self._sign_out_url = sign_out_url
        self._clock = clock
        self._refresher = refresher

    async def session(self, session_id: str | None, *, absent: str | None = None) -> ActiveSession:
        """The live session behind this cookie value, or Unauthorized. ``absent``: an id hash
        already looked up in this request and found to name no session."""
        if session_id is None:
            raise Unauthorized("session.missing")
        id_hash = hash_id(session_id)
        session = None
        if id_hash != absent:
            session = await self._sessions.get(id_hash, int(self._clock()))
        if session is None:
            raise Unauthorized("session.unknown_or_expired")
        structlog.contextvars.bind_contextvars(session=short_hash(session.id_hash))
        if self._refresher is not None:
            # Refreshed when due (relay/refresh.py): what is judged next is what it brought.
            refreshed = await self._refresher.fresh(session)
            if refreshed is None:
                raise Unauthorized("session.refresh_rejected")
            session = refreshed
        return session

    async def admit(
        self,
        session_id: str | None,
        host: str | None = None,
        query: str = "",
        *,
        absent: str | None = None,
    ) -> ActiveSession:
        """The live session, if its claims pass the rules (the config's, the forwarded host's,
        the query string's) now: rules changed since login apply at once. Else AccessDenied
        (a 403: the user is known, so a proxy shows "not allowed", not a login loop), or
        StepUpRequired (a 401: a new, stronger login is the way on)."""
        session = await self.session(session_id, absent=absent)
        refused = self._judge(session.claims, session.subject, host, query)
        if refused is None:
            return session
        if refused.asked is not None:
            raise StepUpRequired(refused.reason, refused.asked)
        raise AccessDenied(refused.reason, refused.message, refused.detail, self._sign_out_url)

    async def admit_token(
        self, token: str, host: str | None = None, query: str = ""
    ) -> ActiveSession:
        """An API caller (relay/bearer.py), if the token passes and its claims pass the same
        rules a session's would. Else InvalidBearer (401), TokenRefused (403) or
        InsufficientAuthentication (401), each with the WWW-Authenticate of RFC 6750 §3 or
        RFC 9470 §3."""
        if self.bearer is None:
            raise Unauthorized("session.missing")
        caller = await self.bearer.judge(token)
        bearer = short_hash(caller.id_hash)
        refused = self._judge(caller.claims, caller.subject, host, query, bearer=bearer)
        if refused is None:
            return caller
        if refused.asked is not None:
            raise InsufficientAuthentication(refused.reason, refused.asked)
        raise TokenRefused(refused.reason, refused.detail)

    def admits_until(self, claims: dict[str, Any], host: str | None, query: str) -> int:
        """The last second these claims pass for this app (its rules and its step-up, as
        ``_judge`` decides): step_up.FOREVER, or a max_age away from the sign-in, or -1. What
        the forward-auth shortcut keeps per session and app; a refusal it leaves to admit,
        which says why."""
        if self.access.refusal(claims, host, query) is not None:
            return -1
        return step_up.deadline(step_up.demand(query), claims, self.skew)

    def _judge(
        self, claims: dict[str, Any], subject: str, host: str | None, query: str, **named: str
    ) -> _Refused | None:
        """Why these claims may not pass for this app now (its rules, then its step-up), said
        in the log; None when they may."""
        refused = self.access.refusal(claims, host, query)
        if refused is not None:
            log.info(
                "access.denied",
                reason=refused.reason,
                detail=refused.detail or None,
                subject=subject,
                **named,
            )
            return _Refused(refused.reason, refused.detail, refused.message)
        wanted = step_up.demand(query)
        problem = step_up.shortfall(wanted, claims, int(self._clock()), self.skew)
        if problem is None:
            return None
        log.info("step_up.required", reason=problem, subject=subject, asked=wanted.query(), **named)
        if wanted.unreadable is not None:
            # The route's own parameter does not read: no login can satisfy it.
            return _Refused(problem, wanted.unreadable, _UNREADABLE)
        return _Refused(problem, "", asked=wanted.query())


_UNREADABLE = "This page asks for a sign-in the relay cannot read; tell its operator."


@dataclass(frozen=True)
class _Refused:
    reason: str
    detail: str
    message: str = ""
    asked: dict[str, str] | None = None  # a step-up: what a new sign-in must bring
