"""Who may pass: the session behind a cookie, judged by the access rules, on every check that
is not answered by the forward-auth shortcut (endpoints/shortcut.py answers only what this
would answer alike).

The store knows sessions, relay/access.py knows rules; this module knows what a check asks.
"""

from __future__ import annotations

from collections.abc import Callable

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
        (a 403: the user is known, so a proxy shows "not allowed", not a login loop)."""
        session = await self.session(session_id, absent=absent)
        refused = self.access.refusal(session.claims, host, query)
        if refused is not None:
            log.info(
                "access.denied",
                reason=refused.reason,
                detail=refused.detail or None,
                subject=session.subject,
            )
            raise AccessDenied(refused.reason, refused.message, refused.detail, self._sign_out_url)
        wanted = step_up.demand(query)
        problem = step_up.shortfall(wanted, session.claims, int(self._clock()), self.skew)
        if problem is not None:
            self._step_up_refused(problem, wanted, session.subject)
            raise StepUpRequired(problem, wanted.query())
        return session

    def _step_up_refused(self, problem: str, wanted: step_up.Demand, subject: str) -> None:
        log.info("step_up.required", reason=problem, subject=subject, asked=wanted.query())
        if wanted.unreadable is not None:
            # The route's own parameter does not read: no login can satisfy it.
            raise AccessDenied(
                problem,
                "This page asks for a sign-in the relay cannot read; tell its operator.",
                wanted.unreadable,
                self._sign_out_url,
            )

    async def admit_token(
        self, token: str, host: str | None = None, query: str = ""
    ) -> ActiveSession:
        """An API caller (relay/bearer.py), if the token passes and its claims pass the same
        rules a session's would. Else InvalidBearer (401) or TokenRefused (403), each with the
        WWW-Authenticate of RFC 6750 §3."""
        if self.bearer is None:
            raise Unauthorized("session.missing")
        caller = await self.bearer.judge(token)
        refused = self.access.refusal(caller.claims, host, query)
        if refused is not None:
            log.info(
                "access.denied",
                reason=refused.reason,
                detail=refused.detail or None,
                subject=caller.subject,
                bearer=short_hash(caller.id_hash),
            )
            raise TokenRefused(refused.reason, refused.detail)
        wanted = step_up.demand(query)
        problem = step_up.shortfall(wanted, caller.claims, int(self._clock()), self.skew)
        if problem is not None:
            if wanted.unreadable is not None:
                raise TokenRefused(problem, wanted.unreadable)
            log.info("step_up.required", reason=problem, subject=caller.subject)
            raise InsufficientAuthentication(problem, wanted.query())
        return caller
