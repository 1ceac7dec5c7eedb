"""Pending logins: written by /login, taken exactly once by /callback."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select

from relay.crypto import Sealer
from relay.store.database import Database
from relay.store.models import sessions

PENDING = "pending"
_PENDING_LOCK = 0x6F6964632D70656E  # "oidc-pen": the advisory lock writers of pending rows take


@dataclass(frozen=True)
class PendingLogin:
    nonce: str
    code_verifier: str
    return_to: str
    created_at: int
    expires_at: int


@dataclass(frozen=True)
class Added:
    stored: bool  # False: the client already has its maximum of pending logins
    evicted: int  # the oldest pending logins dropped to keep the table within its cap


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

    async def add(
        self,
        state_hash: str,
        binding_hash: str,
        login: PendingLogin,
        *,
        client_hash: str | None,
        max_per_client: int,
        max_pending: int,
    ) -> Added:
        """Write a pending login, within the caps, in one transaction.

        The row goes in first and the caps are checked after, so logins racing each other
        cannot all pass a count taken before any of them was written: past ``max_per_client``
        live rows for this client the new row is taken back out; past ``max_pending`` rows in
        all, the oldest pending rows (anyone's) are dropped: a full table costs the stalest logins,
        never every new one. On PostgreSQL the transactions take turns (an advisory lock), so
        concurrent logins cannot each count the table without the others' rows; SQLite has one
        writer at a time anyway.
        """
        async with self._db.write() as conn:
            if self._db.is_postgres:
                await conn.execute(select(func.pg_advisory_xact_lock(_PENDING_LOCK)))
            await conn.execute(
                insert(sessions).values(
                    id_hash=state_hash,
                    status=PENDING,
                    binding_hash=binding_hash,
                    client_hash=client_hash,
                    nonce=login.nonce,
                    code_verifier=self._sealer.seal(login.code_verifier),
                    return_to=login.return_to,
                    created_at=login.created_at,
                    last_accessed_at=login.created_at,
                    expires_at=login.expires_at,
                )
            )
            if client_hash is not None:
                live = (
                    select(sessions.c.id_hash)
                    .where(
                        sessions.c.client_hash == client_hash,
                        sessions.c.status == PENDING,
                        sessions.c.expires_at > login.created_at,
                    )
                    .limit(max_per_client + 1)
                    .subquery()
                )
                count = (await conn.execute(select(func.count()).select_from(live))).scalar_one()
                if count > max_per_client:
                    await conn.execute(delete(sessions).where(sessions.c.id_hash == state_hash))
                    return Added(stored=False, evicted=0)
            beyond_cap = (
                select(sessions.c.id_hash)
                .where(sessions.c.status == PENDING)
                .order_by(sessions.c.created_at.desc(), sessions.c.id_hash.desc())
                .offset(max_pending)
                .scalar_subquery()
            )
            evicted = await conn.execute(
                delete(sessions).where(
                    sessions.c.status == PENDING, sessions.c.id_hash.in_(beyond_cap)
                )
            )
        return Added(stored=True, evicted=evicted.rowcount)

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
