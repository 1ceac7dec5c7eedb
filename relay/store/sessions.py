"""Authenticated sessions: created by /callback, read on every /auth, ended by /logout.

Expiry is checked on every read; the pruner only reclaims space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.crypto import Sealer, SealError
from relay.store.models import sessions

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


@dataclass(frozen=True)
class ActiveSession:
    id_hash: str
    subject: str
    claims: dict[str, Any]
    created_at: int
    last_accessed_at: int
    expires_at: int


class Sessions:
    def __init__(self, engine: AsyncEngine, sealer: Sealer, lifetimes: Lifetimes) -> None:
        self._engine = engine
        self._sealer = sealer
        self._lifetimes = lifetimes
        self._lookup = select(
            sessions.c.subject,
            sessions.c.claims,
            sessions.c.created_at,
            sessions.c.last_accessed_at,
            sessions.c.expires_at,
        ).where(sessions.c.status == ACTIVE)

    async def create(
        self,
        id_hash: str,
        subject: str,
        claims: dict[str, Any],
        tokens: Tokens,
        now: int,
        *,
        sid: str | None = None,
    ) -> ActiveSession:
        expires_at = self._lifetimes.expires_at(now, now)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    id_hash=id_hash,
                    status=ACTIVE,
                    subject=subject,
                    sid=sid,
                    claims=json.dumps(claims, separators=(",", ":")),
                    id_token=self._sealer.seal(tokens.id_token),
                    access_token=self._sealer.seal(tokens.access_token),
                    refresh_token=self._sealer.seal(tokens.refresh_token),
                    created_at=now,
                    last_accessed_at=now,
                    expires_at=expires_at,
                )
            )
        return ActiveSession(id_hash, subject, claims, now, now, expires_at)

    async def get(self, id_hash: str, now: int) -> ActiveSession | None:
        """The live session for this hash, touched at most once per touch_interval."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._lookup.where(sessions.c.id_hash == id_hash))).first()
            if row is None or row.expires_at <= now:
                return None
            last_accessed_at, expires_at = row.last_accessed_at, row.expires_at
            if now - last_accessed_at >= self._lifetimes.touch_interval:
                last_accessed_at = now
                expires_at = self._lifetimes.expires_at(row.created_at, now)
                # Guarded by the value we read: of two concurrent touches only one writes.
                await conn.execute(
                    update(sessions)
                    .where(
                        sessions.c.id_hash == id_hash,
                        sessions.c.last_accessed_at == row.last_accessed_at,
                    )
                    .values(last_accessed_at=now, expires_at=expires_at)
                )
                await conn.commit()
        return ActiveSession(
            id_hash=id_hash,
            subject=row.subject,
            claims=json.loads(row.claims),
            created_at=row.created_at,
            last_accessed_at=last_accessed_at,
            expires_at=expires_at,
        )

    async def delete(self, id_hash: str) -> str | None:
        """End a session; return its ID token (for the provider's logout hint), if any."""
        statement = (
            delete(sessions)
            .where(sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE)
            .returning(sessions.c.id_token)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            return None
        try:
            return self._sealer.open(row.id_token)
        except SealError:
            # Sealed under a secret no longer configured: the session still ends, just
            # without an id_token_hint for the provider.
            return None

    async def delete_for_provider_session(self, subject: str | None, sid: str | None) -> int:
        """End every session of a provider session (sid) and/or user (sub); return how many."""
        statement = delete(sessions).where(sessions.c.status == ACTIVE)
        if sid is not None:
            statement = statement.where(sessions.c.sid == sid)
        if subject is not None:
            statement = statement.where(sessions.c.subject == subject)
        async with self._engine.begin() as conn:
            return (await conn.execute(statement)).rowcount
