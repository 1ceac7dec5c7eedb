"""Who may pass: the session behind a cookie, judged on every check that is not answered by
the forward-auth shortcut (endpoints/shortcut.py answers only what this would answer alike).

The store knows sessions; this module knows what a check asks of one.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from relay.crypto import hash_id, short_hash
from relay.errors import Unauthorized
from relay.refresh import Refresher
from relay.store.sessions import ActiveSession, Sessions


class Gate:
    def __init__(
        self,
        sessions: Sessions,
        clock: Callable[[], float],
        refresher: Refresher | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._refresher = refresher

    async def session(self, session_id: str | None) -> ActiveSession:
        """The live session behind this cookie value, or Unauthorized."""
        if session_id is None:
            raise Unauthorized("session.missing")
        session = await self._sessions.get(hash_id(session_id), int(self._clock()))
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
