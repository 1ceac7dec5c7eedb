"""One prune pass: delete expired rows in bounded batches (sessions), the used logout
tokens that could no longer be accepted anyway, and the ended-sessions log past its keep."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.store.database import Database
from relay.store.logout_tokens import forget_expired
from relay.store.models import sessions
from relay.store.sqlite_watch import forget_old

# pg_try_advisory_lock key shared by every relay on a database: "relay" + "prune" in ASCII.
ADVISORY_LOCK_KEY = 0x72656C6179_7072
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")


@dataclass(frozen=True)
class PruneResult:
    removed: int
    batches: int
    skipped: bool = False  # another process held the lock


async def prune(db: Database, now: int, batch_size: int) -> PruneResult:
    """Delete rows with expires_at <= now, batch_size at a time, each batch committed alone.

    On PostgreSQL the pass runs under an advisory lock; a process that cannot take it skips
    the pass, so two relays on one database never prune at the same time.
    """
    async with db.maintenance() as conn:
        postgres = db.is_postgres
        if postgres:
            locked = (await conn.execute(_TRY_LOCK, {"key": ADVISORY_LOCK_KEY})).scalar_one()
            await conn.commit()
            if not locked:
                return PruneResult(removed=0, batches=0, skipped=True)
        try:
            return await _delete_in_batches(conn, now, batch_size)
        finally:
            if postgres:
                # A batch that failed left its transaction aborted, where the unlock would fail
                # too; and a session-level lock survives the rollback: end the transaction first.
                await conn.rollback()
                await conn.execute(_UNLOCK, {"key": ADVISORY_LOCK_KEY})
                await conn.commit()


async def _delete_in_batches(conn: AsyncConnection, now: int, batch_size: int) -> PruneResult:
    expired = select(sessions.c.id_hash).where(sessions.c.expires_at <= now).limit(batch_size)
    # Used logout tokens past their age: a few hundred a day at most, gone in one statement.
    removed = await forget_expired(conn, now)
    # Ended-sessions log entries (SQLite) past KEEP, also a handful: not counted as rows.
    await forget_old(conn, now)
    await conn.commit()
    batches = 0
    while True:
        result = await conn.execute(delete(sessions).where(sessions.c.id_hash.in_(expired)))
        await conn.commit()
        batches += 1
        removed += result.rowcount
        if result.rowcount < batch_size:
            return PruneResult(removed=removed, batches=batches)
