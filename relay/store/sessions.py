"""Authenticated sessions: created by /callback, read on every /auth, ended by /logout.

Expiry is checked on every read, cached or not; the pruner only reclaims space. Reads are
answered from the in-process cache (store/cache.py) when it may be trusted; ending a session
invalidates it on every replica (store/invalidation.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Delete, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.crypto import Sealer, SealError
from relay.errors import DatabaseUnavailable
from relay.store.cache import CachedSession, SessionCache
from relay.store.database import Database
from relay.store.invalidation import announce
from relay.store.listing import AmbiguousPrefix, hash_prefix
from relay.store.logout_tokens import remember as remember_logout_token
from relay.store.models import sessions
from relay.store.outage import OutageGrace

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
    expires_in: int | None = None  # the access token's lifetime, when the provider said


@dataclass(frozen=True, slots=True)
class ActiveSession:
    id_hash: str
    subject: str
    claims: dict[str, Any]
    created_at: int
    last_accessed_at: int
    expires_at: int
    # Unsealed: what a later change may hand to apps. Never in a repr (nor a log line).
    access_token: str | None = field(default=None, repr=False)
    access_expires_at: int | None = None  # None: the provider did not say
    has_refresh_token: bool = False
    # What the forward-auth shortcut worked out for this version of the session (its headers,
    # its verdict per app): kept on it, so it goes when the cache lets the session go, and a
    # new version (a touch, a refresh, a new read) starts afresh.
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


@dataclass(frozen=True)
class RefreshClaim:
    """What a replica that claimed a session's refresh needs, unsealed (never in a repr)."""

    refresh_token: str = field(repr=False)
    id_token: str | None = field(repr=False)
    nonce: str | None  # the login's, once a refresh has recorded it
    lease_until: int
    # Grants sent before this one and never answered (see models.refresh_unsettled).
    unsettled: int = 0


def shared(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims as the cache keeps them: names, and the strings in lists (groups), interned,
    so that 100,000 sessions hold one copy of "email" and of "all-staff" rather than 100,000
    (about 1 KB less per cached session with ten groups; benchmarks/cache_bytes.py)."""
    return {
        sys.intern(name): (
            [sys.intern(item) if type(item) is str else item for item in value]
            if type(value) is list
            else value
        )
        for name, value in claims.items()
    }


# Built once: SQLAlchemy then finds their compiled form in its cache without rebuilding them.
_LOOKUP = select(
    sessions.c.subject,
    sessions.c.claims,
    sessions.c.created_at,
    sessions.c.last_accessed_at,
    sessions.c.expires_at,
    sessions.c.access_token,
    sessions.c.access_expires_at,
    sessions.c.refresh_token.is_not(None).label("has_refresh_token"),
).where(sessions.c.id_hash == bindparam("key"), sessions.c.status == ACTIVE)
# A warm start (store/warm.py): the most recently active sessions' hashes, then their rows
# (LOOKUP's columns) a batch at a time.
WARM_IDS = (
    select(sessions.c.id_hash)
    .where(sessions.c.status == ACTIVE, sessions.c.expires_at > bindparam("now"))
    .order_by(sessions.c.last_accessed_at.desc())
    .limit(bindparam("room"))
)
WARM_ROWS = select(sessions.c.id_hash, *_LOOKUP.selected_columns).where(
    sessions.c.id_hash.in_(bindparam("keys", expanding=True)), sessions.c.status == ACTIVE
)
# The same two, as SQL for store/hot.py (PostgreSQL): tests/test_sessions.py holds them to
# the SQLAlchemy forms above.
LOOKUP_SQL = (
    "SELECT subject, claims, created_at, last_accessed_at, expires_at, access_token,"
    " access_expires_at, refresh_token IS NOT NULL FROM sessions"
    " WHERE id_hash = %s AND status = 'active'"
)
TOUCH_SQL = (
    "UPDATE sessions SET last_accessed_at = %s, expires_at = %s"
    " WHERE id_hash = %s AND status = 'active' AND expires_at > %s AND last_accessed_at <= %s"
)
# A touch writes only if nobody (no other request, no other replica) touched the row within
# the interval: of concurrent touches one writes, and the others read the row again.
_TOUCH = (
    update(sessions)
    .where(
        sessions.c.id_hash == bindparam("key"),
        sessions.c.status == ACTIVE,
        sessions.c.expires_at > bindparam("now"),
        sessions.c.last_accessed_at <= bindparam("touched_before"),
    )
    .values(last_accessed_at=bindparam("now"), expires_at=bindparam("new_expires_at"))
)
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


class Sessions:
    def __init__(
        self,
        db: Database,
        sealer: Sealer,
        lifetimes: Lifetimes,
        cache: SessionCache,
        *,
        refresh_margin: int | None = None,
        grace: OutageGrace | None = None,
        keep_access_token: bool = True,
    ) -> None:
        self._db = db
        self._sealer = sealer
        self._lifetimes = lifetimes
        self.cache = cache
        # Seconds before the access token's expiry that a refresh is due; None: never.
        self.refresh_margin = refresh_margin
        # Off unless [cache] outage_grace is set (and the listener holds the cache for it).
        self.grace = grace if grace is not None else OutageGrace(0)
        # Whether a session in memory holds its access token: only when a header sends it to
        # apps. Otherwise it stays sealed in the table (a cached session is a third smaller).
        self._keep_access_token = keep_access_token

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
        access_expires_at = None if tokens.expires_in is None else now + tokens.expires_in
        generation = self.cache.generation
        async with self._db.write() as conn:
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
                    access_expires_at=access_expires_at,
                    created_at=now,
                    last_accessed_at=now,
                    expires_at=expires_at,
                )
            )
        # After the commit: a miss remembered by a read that ran before it is cleared, and one
        # read before it that comes back later is not remembered (cache.py, births).
        self.cache.born(id_hash)
        session = ActiveSession(
            id_hash,
            subject,
            claims,
            now,
            now,
            expires_at,
            tokens.access_token if self._keep_access_token else None,
            access_expires_at,
            tokens.refresh_token is not None,
        )
        self.cache.put(id_hash, CachedSession(session), generation)
        return session

    def cached(self, id_hash: str, now: int) -> ActiveSession | None:
        """The session, when the cache alone can answer for it now: trusted, holding it, not
        expired, no touch or refresh due; or, riding out a database outage, held from before
        it (store/outage.py; no touch can be written then). No I/O: the forward-auth shortcut
        asks this first, and get() answers alike."""
        entry = self.cache.get(id_hash)
        if entry is None:
            # Riding out an outage, maybe; a refresh due is the routed gate's to try.
            held = self.cache.held(id_hash)
            if held is None or self.refresh_due(held.session, now):
                return None
            return self._held(id_hash, now)
        session = entry.session
        if session.expires_at <= now or self._touch_due(entry, now):
            return None
        if self.refresh_due(session, now):
            return None
        self.cache.hits += 1
        return session

    async def get(self, id_hash: str, now: int) -> ActiveSession | None:
        """The live session for this hash, touched at most once per touch_interval."""
        entry = self.cache.get(id_hash)
        if entry is not None and entry.session.expires_at <= now:
            # Expired by what this replica knows; another may have touched it since.
            self.cache.discard(id_hash)
            entry = None
        if entry is None:
            if self.cache.known_missing(id_hash, now):
                return None
            held = self._held(id_hash, now)
            if held is not None:
                return held  # riding out an outage: no touch, nothing can be written
            try:
                entry = await self._read(id_hash, now)
            except DatabaseUnavailable as exc:
                self.grace.failed(exc)  # refused or unreachable: held sessions ride it out
                held = self._held(id_hash, now)
                if held is None:
                    raise
                return held
            self.grace.reachable()
            if entry is None:
                return None
        else:
            self.cache.hits += 1
        if self._touch_due(entry, now):
            entry = await self._touch(id_hash, entry, now)
        return None if entry is None else entry.session

    def _held(self, id_hash: str, now: int) -> ActiveSession | None:
        """A session held since the database went away, while [cache] outage_grace lets it
        answer (store/outage.py): unexpired by what this replica knew."""
        if not self.grace.covers():
            return None
        entry = self.cache.held(id_hash)
        if entry is None or entry.session.expires_at <= now:
            return None
        self.grace.answered()
        return entry.session

    def refresh_due(self, session: ActiveSession, now: int) -> bool:
        """The access token has expired or expires within the margin, and can be refreshed."""
        return (
            self.refresh_margin is not None
            and session.has_refresh_token
            and session.access_expires_at is not None
            and session.access_expires_at - self.refresh_margin <= now
        )

    def _touch_due(self, entry: CachedSession, now: int) -> bool:
        last = entry.session.last_accessed_at
        return now - last >= self._lifetimes.touch_interval and not entry.touching

    async def _read(self, id_hash: str, now: int) -> CachedSession | None:
        self.cache.misses += 1
        generation, births = self.cache.generation, self.cache.births
        row: Sequence[Any] | None
        if self._db.hot is not None:
            row = await self._db.hot.fetch_one(LOOKUP_SQL, (id_hash,))
        else:
            async with self._db.read() as conn:
                row = (await conn.execute(_LOOKUP, {"key": id_hash})).first()
        if row is None:
            # Nobody has an active session by this hash; see cache.py on why nobody will.
            self.cache.remember_missing(id_hash, now, births)
            return None
        entry = self.record(id_hash, row, now)
        if entry is not None:
            self.cache.put(id_hash, entry, generation)
        return entry

    def record(self, id_hash: str, row: Sequence[Any], now: int) -> CachedSession | None:
        """A session from a row of LOOKUP_SQL's columns (no I/O); None if it has expired."""
        subject, claims, created_at, last_accessed_at, expires_at, sealed, access_expires_at = row[
            :7
        ]
        if expires_at <= now:
            return None
        access_token = None
        if self._keep_access_token:
            # None when sealed under a secret no longer configured
            with contextlib.suppress(SealError):
                access_token = self._sealer.open(sealed)
        return CachedSession(
            ActiveSession(
                id_hash,
                subject,
                shared(json.loads(claims)),
                created_at,
                last_accessed_at,
                expires_at,
                access_token,
                access_expires_at,
                bool(row[7]),
            )
        )

    async def _touch(self, id_hash: str, entry: CachedSession, now: int) -> CachedSession | None:
        expires_at = self._lifetimes.expires_at(entry.session.created_at, now)
        entry.touching = True
        touched_before = now - self._lifetimes.touch_interval
        try:
            if self._db.hot is not None:
                params = (now, expires_at, id_hash, now, touched_before)
                touched = await self._db.hot.execute(TOUCH_SQL, params)
            else:
                async with self._db.read() as conn:
                    result = await conn.execute(
                        _TOUCH,
                        {
                            "key": id_hash,
                            "now": now,
                            "touched_before": touched_before,
                            "new_expires_at": expires_at,
                        },
                    )
                touched = result.rowcount
        finally:
            entry.touching = False
        if touched == 1:
            entry.session = replace(entry.session, last_accessed_at=now, expires_at=expires_at)
            return entry
        # Touched elsewhere within the interval, or gone: the table knows which.
        self.cache.discard(id_hash)
        return await self._read(id_hash, now)

    async def reload(self, id_hash: str, now: int) -> ActiveSession | None:
        """The session as the table has it now (another replica may have changed it)."""
        self.cache.discard(id_hash)
        entry = await self._read(id_hash, now)
        return None if entry is None else entry.session

    async def claim_refresh(self, id_hash: str, now: int, lease: int) -> RefreshClaim | None:
        """Take the right to refresh this session for ``lease`` seconds, if nobody holds it
        and a refresh is still due by the row; see _CLAIM."""
        if self.refresh_margin is None:
            return None
        lease_until = now + lease
        params = {
            "key": id_hash,
            "now": now,
            "due_before": now + self.refresh_margin,
            "lease_until": lease_until,
        }
        async with self._db.read() as conn:
            row = (await conn.execute(_CLAIM, params)).first()
        if row is None:
            return None
        refresh_token = self._sealer.open(row.refresh_token)  # SealError: the caller's to say
        if refresh_token is None:
            return None
        try:
            id_token = self._sealer.open(row.id_token)
        except SealError:
            id_token = None
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
        generation = self.cache.generation
        async with self._db.read() as conn:
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
        self.cache.put(session.id_hash, CachedSession(fresh), generation)
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
        async with self._db.read() as conn:
            await conn.execute(statement)

    async def forget_refresh_token(self, id_hash: str) -> None:
        """Drop a refresh token that cannot be opened (sealed under a secret no longer
        configured) and its lease: the session goes on without refreshes."""
        statement = (
            update(sessions)
            .where(sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE)
            .values(refresh_token=None, refresh_lease_until=None)
        )
        async with self._db.read() as conn:
            await conn.execute(statement)
        self.cache.invalidate([id_hash])

    async def refresh_lease(self, id_hash: str) -> int | None:
        """Until when another replica's refresh (or its failure's retry interval) holds."""
        statement = select(sessions.c.refresh_lease_until).where(
            sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE
        )
        async with self._db.read() as conn:
            lease: int | None = (await conn.execute(statement)).scalar()
        return lease

    async def delete(self, id_hash: str) -> str | None:
        """End a session; return its ID token (for the provider's logout hint), if any."""
        statement = (
            delete(sessions)
            .where(sessions.c.id_hash == id_hash, sessions.c.status == ACTIVE)
            .returning(sessions.c.id_token)
        )
        try:
            async with self._db.write() as conn:
                row = (await conn.execute(statement)).first()
                if row is not None:
                    await announce(conn, [id_hash])
        except DatabaseUnavailable:
            # The user asked to leave and gets a 503: at least this replica stops admitting
            # the session from what it holds through an outage (outage_grace).
            self.cache.discard(id_hash)
            raise
        self.cache.invalidate([id_hash])
        if row is None:
            return None
        try:
            return self._sealer.open(row.id_token)
        except SealError:
            # Sealed under a secret no longer configured: the session still ends, just
            # without an id_token_hint for the provider.
            return None

    async def revoke_subject(self, subject: str) -> list[str]:
        """End every active session of this user (an operator's revocation); return their
        hashes. Every replica drops them from its cache (store/invalidation.py)."""
        statement = delete(sessions).where(
            sessions.c.status == ACTIVE, sessions.c.subject == subject
        )
        async with self._db.write() as conn:
            ended = await self._end(conn, statement)
        self.cache.invalidate(ended)
        return ended

    async def revoke_prefix(self, prefix: str) -> list[str]:
        """End the one active session whose hash starts with ``prefix`` (see
        store/listing.py ``hash_prefix``); [] when none does. Raises AmbiguousPrefix, ending
        nothing, when several do."""
        if hash_prefix(prefix) != prefix:
            raise ValueError("not a session hash prefix")
        matching = sessions.c.status == ACTIVE, sessions.c.id_hash.like(prefix + "%")
        async with self._db.write() as conn:
            found = (await conn.execute(select(sessions.c.id_hash).where(*matching).limit(2))).all()
            if len(found) > 1:
                count = select(func.count()).select_from(sessions).where(*matching)
                raise AmbiguousPrefix((await conn.execute(count)).scalar_one())
            if not found:
                return []
            only = sessions.c.id_hash == found[0].id_hash
            ended = await self._end(conn, delete(sessions).where(only, sessions.c.status == ACTIVE))
        self.cache.invalidate(ended)
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
        self.cache.invalidate(ended)
        return len(ended)

    async def _end(self, conn: AsyncConnection, statement: Delete) -> list[str]:
        """Run a DELETE of sessions and tell every replica, in ``conn``'s transaction. The
        caller drops them from this cache after the commit, as revoke_subject does: a
        read between an early drop and the commit would cache them again."""
        ended = [row.id_hash for row in await conn.execute(statement.returning(sessions.c.id_hash))]
        await announce(conn, ended)
        return ended
