"""How many rows the sessions table holds, by state: for the gauges (and the CLI to come)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, func, select

from relay.store.database import Database
from relay.store.models import sessions

_LIVE = sessions.c.expires_at > bindparam("now")
_COUNTS = select(sessions.c.status, _LIVE.label("live"), func.count().label("rows")).group_by(
    sessions.c.status, _LIVE
)


@dataclass(frozen=True)
class SessionCounts:
    active: int = 0
    pending: int = 0
    expired: int = 0  # either state, past expires_at: waiting for the pruner


async def count_sessions(db: Database, now: int) -> SessionCounts:
    async with db.autocommit() as conn:
        rows = (await conn.execute(_COUNTS, {"now": now})).all()
    counts = {"active": 0, "pending": 0, "expired": 0}
    for row in rows:
        key = row.status if row.live else "expired"
        counts[key] = counts.get(key, 0) + row.rows
    return SessionCounts(counts["active"], counts["pending"], counts["expired"])


async def signed_in_since(db: Database, since: int, now: int) -> int:
    """Live sessions created at or after ``since``: the sign-ins of that span that have not
    ended (an ended session leaves no row to count)."""
    statement = (
        select(func.count())
        .select_from(sessions)
        .where(
            sessions.c.status == "active",
            sessions.c.created_at >= since,
            sessions.c.expires_at > now,
        )
    )
    async with db.autocommit() as conn:
        return int((await conn.execute(statement)).scalar_one())
