"""The audit line: every ending of sessions by someone other than their owner (an operator in
the console, a script with the admin token, a shell with the CLI) is one log event,
``audit.sessions_ended``: who did it, whose sessions, how many, from where, and through what.

Endings by the owner (sign-out, their sessions page) and by the provider (back-channel
logout) are logged where they happen; they are not operators' acts.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from relay.crypto import short_hash
from relay.store.revocation import Ended

log = structlog.get_logger("relay.audit")


def sessions_ended(
    ended: Sequence[Ended], *, via: str, by: str, source: str | None, asked: str
) -> None:
    """``via``: console, api or cli; ``by``: the operator (their email or subject, "admin
    token", or the OS user); ``source``: their address (or host, for the CLI); ``asked``:
    what they named (a subject, or a session id prefix), logged even when nothing ended."""
    log.info(
        "audit.sessions_ended",
        via=via,
        by=by,
        source=source,
        asked=asked,
        subjects=sorted({e.subject for e in ended if e.subject is not None}),
        ended=len(ended),
        sessions=[short_hash(e.id_hash) for e in ended][:100],
    )
