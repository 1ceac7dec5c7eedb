"""Pending logins: written by /login, taken exactly once by /callback."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select

from relay.crypto import Sealer
from relay.store.database import Database
from relay.store.models import sessions

PENDING = "pending"


@dataclass(frozen=True)
class PendingLogin:
    nonce: str
    code_verifier: str
    return_to: str
    created_at: int
    expires_at: int


class PendingLogins:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    async def count_for_browser(self, binding_hash: str, now: int) -> int:
        query = (
            select(func.count())
            .select_from(sessions)
            .where(
                sessions.c.binding_hash == binding_hash,
                sessions.c.status == PENDING,
                sessions.c.expires_at > now,
            )
        )
        async with self._db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def count_all(self, now: int, up_to: int) -> int:
        """Pending logins still live, counted no further than ``up_to`` (a bounded scan)."""
        live = (
            select(sessions.c.id_hash)
            .where(sessions.c.status == PENDING, sessions.c.expires_at > now)
            .limit(up_to)
            .subquery()
        )
        async with self._db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(live))).scalar_one())

    async def add(self, state_hash: str, binding_hash: str, login: PendingLogin) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                insert(sessions).values(
                    id_hash=state_hash,
                    status=PENDING,
                    binding_hash=binding_hash,
                    nonce=login.nonce,
                    code_verifier=self._sealer.seal(login.code_verifier),
                    return_to=login.return_to,
                    created_at=login.created_at,
                    last_accessed_at=login.created_at,
                    expires_at=login.expires_at,
                )
            )

    async def take(self, state_hash: str, binding_hash: str, now: int) -> PendingLogin | None:
        """Consume the pending login for this state and browser, if any: one caller wins.

        The row is deleted whether or not it is still fresh, so a state is never tried twice.
        """
        statement = (
            delete(sessions)
            .where(
                sessions.c.id_hash == state_hash,
                sessions.c.status == PENDING,
                sessions.c.binding_hash == binding_hash,
            )
            .returning(
                sessions.c.nonce,
                sessions.c.code_verifier,
                sessions.c.return_to,
                sessions.c.created_at,
                sessions.c.expires_at,
            )
        )
        async with self._db.write() as conn:
            row = (await conn.execute(statement)).first()
        if row is None or row.expires_at <= now:
            return None
        verifier = self._sealer.open(row.code_verifier)
        if verifier is None or row.nonce is None or row.return_to is None:
            return None
        return PendingLogin(
            nonce=row.nonce,
            code_verifier=verifier,
            return_to=row.return_to,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )
