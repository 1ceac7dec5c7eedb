"""Pending logins: written by /login, taken exactly once by /callback."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

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
    # A route's step-up, asked of the provider: the ID token must show it (relay/step_up.py).
    asked_acr: tuple[str, ...] = ()
    asked_max_age: int | None = None
    provider: str | None = None  # the issuer (as configured) the login went to


@dataclass(frozen=True)
class Added:
    stored: bool  # False: refused, for one of the two reasons below
    evicted: int  # pending logins dropped to keep the table within max_pending
    table_full: bool = False  # refused: the table is full and this client holds the most


class PendingLogins:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer

    async def return_to(self, state_hash: str, now: int) -> str | None:
        """Where a live pending login was going, whichever browser it is bound to: for the
        page that offers a new login when a newer one replaced it. Nothing is taken."""
        query = select(sessions.c.return_to).where(
            sessions.c.id_hash == state_hash,
            sessions.c.status == PENDING,
            sessions.c.expires_at > now,
        )
        async with self._db.autocommit() as conn:
            found: str | None = (await conn.execute(query)).scalar_one_or_none()
        return found

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
        live rows for this client the new row is taken back out. Past ``max_pending`` rows in
        all, the client holding the most pending rows pays, never one holding fewer than the
        newcomer: if another client holds more than the newcomer's own, its oldest row goes;
        if the newcomer's client holds the most (or as many as any), the newcomer is refused,
        since a login someone is in the middle of is worth more than one just asked for. So a
        flood, from one address or spread over many, displaces only itself. Logins whose
        client is unknown (a proxy that did not say) are one client here, but people behind
        that proxy are many: when they hold the most, their own oldest goes instead of the
        newcomer being refused.
        On PostgreSQL the transactions take turns (an advisory lock), so concurrent logins
        cannot each count the table without the others' rows; SQLite's writers take turns in
        ``Database.write``.
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
                    asked_acr=" ".join(login.asked_acr) or None,
                    asked_max_age=login.asked_max_age,
                    provider=login.provider,
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
            # One more row than the cap at most (each login adds one, and takes one out when
            # over): counting up to the cap's worth of index entries is enough to know.
            beyond = (
                select(sessions.c.id_hash)
                .where(sessions.c.status == PENDING)
                .offset(max_pending)
                .limit(1)
            )
            if (await conn.execute(beyond)).first() is None:
                return Added(stored=True, evicted=0)
            victim = await self._evict_for(conn, state_hash, client_hash)
            if victim is None:
                await conn.execute(delete(sessions).where(sessions.c.id_hash == state_hash))
                return Added(stored=False, evicted=0, table_full=True)
            await conn.execute(delete(sessions).where(sessions.c.id_hash == victim))
        return Added(stored=True, evicted=1)

    async def _evict_for(
        self, conn: AsyncConnection, state_hash: str, client_hash: str | None
    ) -> str | None:
        """The pending row to drop for a full table: the oldest of the client holding the
        most pending rows, if that is not the newcomer's own client (None: refuse the
        newcomer); for an unknown client, its own oldest but the newcomer."""
        group = sessions.c.client_hash
        pending = sessions.c.status == PENDING
        own = (
            await conn.execute(
                select(func.count()).select_from(sessions).where(pending, _same(group, client_hash))
            )
        ).scalar_one()
        rows = func.count().label("rows")
        biggest = (
            await conn.execute(
                select(group, rows)
                .where(pending, group.is_distinct_from(client_hash))
                .group_by(group)
                .order_by(rows.desc(), func.min(sessions.c.created_at))
                .limit(1)
            )
        ).first()
        if biggest is not None and biggest.rows > own:
            target: str | None = biggest.client_hash
        elif client_hash is None:
            target = None  # unknown clients are never refused: their own oldest goes
        else:
            return None
        oldest = (
            select(sessions.c.id_hash)
            .where(pending, _same(group, target), sessions.c.id_hash != state_hash)
            .order_by(sessions.c.created_at, sessions.c.id_hash)
            .limit(1)
        )
        victim: str | None = (await conn.execute(oldest)).scalar_one_or_none()
        return victim

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
                sessions.c.asked_acr,
                sessions.c.asked_max_age,
                sessions.c.provider,
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
            asked_acr=tuple((row.asked_acr or "").split()),
            asked_max_age=row.asked_max_age,
            provider=row.provider,
        )


def _same(column: ColumnElement[str | None], value: str | None) -> ColumnElement[bool]:
    """``column = value``, where None (an unknown client) is a value too."""
    return column.is_(None) if value is None else column == value
