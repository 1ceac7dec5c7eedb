"""The refresh lease: one refresh per session across replicas (relay/refresh.py drives it).

A lease, not a row lock: see _CLAIM.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from sqlalchemy import bindparam, select, update

from relay.crypto import Sealer
from relay.store.cache import CachedSession, SessionCache
from relay.store.database import Database
from relay.store.models import sessions
from relay.store.records import ACTIVE, ActiveSession, RefreshClaim

# One refresh per session across replicas: a replica claims the row by moving the lease
# forward, only if no lease is running and a refresh is still due by the row itself (another
# replica may have refreshed it since this one read it). A guarded UPDATE in a transaction of
# its own, not SELECT ... FOR UPDATE held across the provider call: that would keep a
# transaction and a pool connection for up to provider.timeout, and every other request for
# the session would queue on the row lock until the database timeout (a 503). The lease
# expires, so a replica that dies mid-refresh blocks the others only until then. The claim
# counts the grant about to be sent as unanswered until its answer comes (store_refreshed,
# release_refresh): a replica that dies with it in flight leaves that count behind.
_CLAIM = (
    update(sessions)
    .where(
        sessions.c.id_hash == bindparam("key"),
        sessions.c.status == ACTIVE,
        sessions.c.expires_at > bindparam("now"),
        sessions.c.refresh_token.is_not(None),
        sessions.c.access_expires_at <= bindparam("due_before"),
        (sessions.c.refresh_lease_until.is_(None))
        | (sessions.c.refresh_lease_until <= bindparam("now")),
    )
    .values(
        refresh_lease_until=bindparam("lease_until"),
        refresh_unsettled=sessions.c.refresh_unsettled + 1,
    )
    .returning(
        sessions.c.refresh_token,
        sessions.c.id_token,
        sessions.c.nonce,
        sessions.c.refresh_unsettled,
    )
)


class RefreshLeases:
    def __init__(
        self,
        db: Database,
        sealer: Sealer,
        cache: SessionCache,
        *,
        refresh_margin: int | None,
        keep_access_token: bool,
    ) -> None:
        self._db = db
        self._sealer = sealer
        self._cache = cache
        self._refresh_margin = refresh_margin
        self._keep_access_token = keep_access_token

    async def claim_refresh(self, id_hash: str, now: int, lease: int) -> RefreshClaim | None:
        """Take the right to refresh this session for ``lease`` seconds, if nobody holds it
        and a refresh is still due by the row; see _CLAIM."""
        if self._refresh_margin is None:
            return None
        lease_until = now + lease
        params = {
            "key": id_hash,
            "now": now,
            "due_before": now + self._refresh_margin,
            "lease_until": lease_until,
        }
        async with self._db.autocommit() as conn:
            row = (await conn.execute(_CLAIM, params)).first()
        if row is None:
            return None
        refresh_token = self._sealer.open(row.refresh_token)  # SealError: the caller's to say
        if refresh_token is None:
            return None
        id_token = self._sealer.open_or_absent(row.id_token)
        # RETURNING gives the count after this claim's own increment.
        return RefreshClaim(
            refresh_token, id_token, row.nonce, lease_until, row.refresh_unsettled - 1
        )

    async def store_refreshed(
        self,
        session: ActiveSession,
        claim: RefreshClaim,
        *,
        access_token: str,
        refresh_token: str | None,
        id_token: str | None,
        expires_in: int | None,
        claims: dict[str, Any],
        nonce: str | None,
        now: int,
    ) -> ActiveSession | None:
        """Write what a refresh brought, if this replica still holds the claim; the lease
        ends. A token the provider did not rotate is kept. None: the claim was lost (the
        session ended, or the lease ran out and another replica took it)."""
        values: dict[str, Any] = {
            "claims": json.dumps(claims, separators=(",", ":")),
            "access_token": self._sealer.seal(access_token),
            "access_expires_at": None if expires_in is None else now + expires_in,
            "nonce": nonce,
            "refresh_lease_until": None,
            "refresh_unsettled": 0,  # an answer: whatever went before, this token is current
        }
        if refresh_token is not None:
            values["refresh_token"] = self._sealer.seal(refresh_token)
        if id_token is not None:
            values["id_token"] = self._sealer.seal(id_token)
        statement = (
            update(sessions)
            .where(
                sessions.c.id_hash == session.id_hash,
                sessions.c.status == ACTIVE,
                sessions.c.refresh_lease_until == claim.lease_until,
            )
            .values(**values)
        )
        generation = self._cache.generation
        async with self._db.autocommit() as conn:
            result = await conn.execute(statement)
        if result.rowcount != 1:
            return None
        fresh = replace(
            session,
            claims=claims,
            access_token=access_token if self._keep_access_token else None,
            access_expires_at=values["access_expires_at"],
            has_refresh_token=True,
        )
        self._cache.put(session.id_hash, CachedSession(fresh), generation)
        return fresh

    async def release_refresh(
        self, id_hash: str, claim: RefreshClaim, retry_at: int, *, unsettled: int
    ) -> None:
        """A refresh failed: no replica tries again before ``retry_at`` (the lease is held
        until then), if this one still holds the claim; ``unsettled`` grants are left whose
        answer never came."""
        statement = (
            update(sessions)
            .where(
                sessions.c.id_hash == id_hash,
                sessions.c.status == ACTIVE,
                sessions.c.refresh_lease_until == claim.lease_until,
            )
            .values(refresh_lease_until=retry_at, refresh_unsettled=unsettled)
        )
        async with self._db.autocommit() as conn:
            await conn.execute(statement)

    async def forget_refresh_token(self, id_hash: str) -> None:
        """Drop a refresh token that cannot be opened (sealed under a secret no longer
        configured) and its lease: the session goes on without refreshes."""
        statement = (
            update(sessions)
            .where(sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE)
            .values(refresh_token=None, refresh_lease_until=None)
        )
        async with self._db.autocommit() as conn:
            await conn.execute(statement)
        self._cache.invalidate([id_hash])

    async def refresh_lease(self, id_hash: str) -> int | None:
        """Until when another replica's refresh (or its failure's retry interval) holds."""
        statement = select(sessions.c.refresh_lease_until).where(
            sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE
        )
        async with self._db.autocommit() as conn:
            lease: int | None = (await conn.execute(statement)).scalar()
        return lease
