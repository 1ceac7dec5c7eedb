"""Ending sessions: logout, an operator's revocation, back-channel logout. Each ending deletes
the row and, in the same transaction, tells every replica (store/invalidation.py); this
process's cache drops it after the commit."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Delete, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.crypto import Sealer
from relay.errors import DatabaseUnavailable
from relay.store.cache import SessionCache
from relay.store.database import Database
from relay.store.invalidation import announce
from relay.store.listing import AmbiguousPrefix, hash_prefix
from relay.store.logout_tokens import remember as remember_logout_token
from relay.store.models import sessions
from relay.store.records import ACTIVE


@dataclass(frozen=True)
class Ended:
    """A session an ending removed, whose it was (for the audit line), and its tokens,
    unsealed, for the provider: the refresh token to revoke there (RFC 7009), the ID token
    as the logout's hint. Never in a repr (nor a log line)."""

    id_hash: str
    subject: str | None
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)


class Revocation:
    def __init__(self, db: Database, sealer: Sealer, cache: SessionCache) -> None:
        self._db = db
        self._sealer = sealer
        self._cache = cache

    async def delete(self, id_hash: str) -> Ended | None:
        """End a session; return it, with its tokens (for the provider), if it was live."""
        statement = delete(sessions).where(
            sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE
        )
        try:
            async with self._db.write() as conn:
                ended = await self._end(conn, statement)
        except DatabaseUnavailable:
            # The user asked to leave and gets a 503: at least this replica stops admitting
            # the session from what it holds through an outage (outage_grace).
            self._cache.discard(id_hash)
            raise
        self._cache.invalidate([id_hash])
        return ended[0] if ended else None

    async def revoke_subject(self, subject: str) -> list[Ended]:
        """End every active session of this user (an operator's revocation); return their
        hashes. Every replica drops them from its cache (store/invalidation.py)."""
        statement = delete(sessions).where(
            sessions.c.status == ACTIVE, sessions.c.subject == subject
        )
        async with self._db.write() as conn:
            ended = await self._end(conn, statement)
        self._cache.invalidate(e.id_hash for e in ended)
        return ended

    async def revoke_prefix(self, prefix: str, subject: str | None = None) -> list[Ended]:
        """End the one active session whose hash starts with ``prefix`` (see
        store/listing.py ``hash_prefix``), and whose user is ``subject`` when given (a person
        ending one of their own); [] when none does. Raises AmbiguousPrefix, ending nothing,
        when several do."""
        if hash_prefix(prefix) != prefix:
            raise ValueError("not a session hash prefix")
        matching: tuple[ColumnElement[bool], ...] = (
            sessions.c.status == ACTIVE,
            sessions.c.id_hash.like(prefix + "%"),
        )
        if subject is not None:
            matching += (sessions.c.subject == subject,)
        async with self._db.write() as conn:
            found = (await conn.execute(select(sessions.c.id_hash).where(*matching).limit(2))).all()
            if len(found) > 1:
                count = select(func.count()).select_from(sessions).where(*matching)
                raise AmbiguousPrefix((await conn.execute(count)).scalar_one())
            if not found:
                return []
            only = sessions.c.id_hash == found[0].id_hash
            ended = await self._end(conn, delete(sessions).where(only, sessions.c.status == ACTIVE))
        self._cache.invalidate(e.id_hash for e in ended)
        return ended

    async def end_others(self, subject: str, keep: str) -> list[Ended]:
        """End every active session of this user but ``keep`` (the one asking: "sign out
        everywhere else"); return their hashes."""
        statement = delete(sessions).where(
            sessions.c.status == ACTIVE, sessions.c.subject == subject, sessions.c.id_hash != keep
        )
        async with self._db.write() as conn:
            ended = await self._end(conn, statement)
        self._cache.invalidate(e.id_hash for e in ended)
        return ended

    async def end_by_logout_token(
        self, jti_hash: str, keep_until: int, subject: str | None, sid: str | None
    ) -> int | None:
        """Back-channel logout: remember the token's jti and end the sessions it names, in one
        transaction (a token is used up exactly when its sessions end). None: the jti was
        used before, a replay, and nothing ended."""
        statement = delete(sessions).where(sessions.c.status == ACTIVE)
        if sid is not None:
            statement = statement.where(sessions.c.sid == sid)
        if subject is not None:
            statement = statement.where(sessions.c.subject == subject)
        async with self._db.write() as conn:
            if not await remember_logout_token(conn, jti_hash, keep_until):
                return None
            ended = await self._end(conn, statement)
        self._cache.invalidate(e.id_hash for e in ended)
        return len(ended)

    async def _end(self, conn: AsyncConnection, statement: Delete) -> list[Ended]:
        """Run a DELETE of sessions and tell every replica, in ``conn``'s transaction. The
        caller drops them from this cache after the commit, as revoke_subject does: a
        read between an early drop and the commit would cache them again."""
        columns = sessions.c
        returning = statement.returning(
            columns.id_hash, columns.subject, columns.refresh_token, columns.id_token
        )
        # Tokens sealed under a secret no longer configured read as absent: the session still
        # ends, without a revocation or a logout hint at the provider.
        opened = self._sealer.open_or_absent
        ended = [
            Ended(row.id_hash, row.subject, opened(row.refresh_token), opened(row.id_token))
            for row in await conn.execute(returning)
        ]
        if ended:
            await announce(conn, [e.id_hash for e in ended])
        return ended
