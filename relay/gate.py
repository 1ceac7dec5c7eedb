"""Who may pass: the session behind a cookie, judged on every check that is not answered by
the forward-auth shortcut (endpoints/shortcut.py answers only what this would answer alike).

The store knows sessions; this module knows what a check asks of one.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from relay.crypto import hash_id, short_hash
from relay.errors import Unauthorized
from relay.store.sessions import ActiveSession, Sessions


class Gate:
    def __init__(self, sessions: Sessions, clock: Callable[[], float]) -> None:
        self._sessions = sessions
        self._clock = clock

    async def session(self, session_id: str | None) -> ActiveSession:
        """The live session behind this cookie value, or Unauthorized."""
        if session_id is None:
            raise Unauthorized("session.missing")
        session = await self._sessions.get(hash_id(session_id), int(self._clock()))
        if session is None:
            raise Unauthorized("session.unknown_or_expired")
        structlog.contextvars.bind_contextvars(session=short_hash(session.id_hash))
        return session
