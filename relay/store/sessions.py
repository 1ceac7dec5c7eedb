"""Authenticated sessions: created by /callback, read on every /auth (and touched at most
once per interval), ended by /logout.

Expiry is checked on every read, cached or not; the pruner only reclaims space. Reads are
answered from the in-process cache (store/cache.py) when it may be trusted. The refresh lease
(store/leases.py) and the endings (store/revocation.py, which invalidate a session on every
replica) are jobs of their own, reached as ``Sessions.leases`` and ``Sessions.revocation``;
the records themselves are in store/records.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select

from relay.crypto import Sealer
from relay.errors import DatabaseUnavailable
from relay.store.cache import CachedSession, SessionCache
from relay.store.database import Database
from relay.store.leases import RefreshLeases
from relay.store.models import sessions
from relay.store.outage import OutageGrace
from relay.store.records import ACTIVE, ActiveSession, Lifetimes, SignIn, Tokens, shared
from relay.store.revocation import Revocation
from relay.store.touches import Touches

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
        self.leases = RefreshLeases(
            db,
            sealer,
            cache,
            refresh_margin=refresh_margin,
            keep_access_token=keep_access_token,
        )
        self.revocation = Revocation(db, sealer, cache)
        # Written behind the answer, a batch a second (store/touches.py).
        self.touches = Touches(db, lifetimes, cache)

    async def create(
        self,
        id_hash: str,
        subject: str,
        claims: dict[str, Any],
        tokens: Tokens,
        now: int,
        *,
        sid: str | None = None,
        sign_in: SignIn | None = None,
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
                    **_recorded(sign_in or SignIn()),
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
        expired, no refresh due (a touch due is queued: store/touches.py); or, riding out a
        database outage, held from before it (store/outage.py; no touch can be written then).
        No I/O: the forward-auth shortcut asks this first, and get() answers alike."""
        entry = self.cache.get(id_hash)
        if entry is None:
            # Riding out an outage, maybe; a refresh due is the routed gate's to try.
            held = self.cache.held(id_hash)
            if held is None or self.refresh_due(held.session, now):
                return None
            return self._held(id_hash, now)
        session = entry.session
        if session.expires_at <= now or self.refresh_due(session, now):
            return None
        self.touches.if_due(id_hash, entry, now)
        self.cache.hits += 1
        return session

    async def get(self, id_hash: str, now: int) -> ActiveSession | None:
        """The live session for this hash; a touch due (at most one per touch_interval) is
        queued, not waited for."""
        entry = self.cache.get(id_hash)
        if entry is None and self.cache.held(id_hash) is not None and await self.cache.vouch():
            # Trust had lapsed for a moment (a late heartbeat); the listener's next
            # confirmation restored it while this waited, instead of reading the table.
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
        self.touches.if_due(id_hash, entry, now)
        return entry.session

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

    async def _read(self, id_hash: str, now: int) -> CachedSession | None:
        self.cache.misses += 1
        generation, births = self.cache.generation, self.cache.births
        row: Sequence[Any] | None
        if self._db.hot is not None:
            row = await self._db.hot.fetch_one(LOOKUP_SQL, (id_hash,))
        else:
            async with self._db.autocommit() as conn:
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
            access_token = self._sealer.open_or_absent(sealed)
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

    async def reload(self, id_hash: str, now: int) -> ActiveSession | None:
        """The session as the table has it now (another replica may have changed it)."""
        self.cache.discard(id_hash)
        entry = await self._read(id_hash, now)
        return None if entry is None else entry.session


def _recorded(sign_in: SignIn) -> dict[str, Any]:
    """The sign-in's columns, each cut to what its column holds (the provider's and the
    browser's values are theirs to make as long as they like)."""
    amr = json.dumps(list(sign_in.amr), separators=(",", ":"))
    return {
        "user_agent": _cut(sign_in.user_agent, 512),
        "client_address": _cut(sign_in.client_address, 64),
        "provider": _cut(sign_in.provider, 255),
        "acr": _cut(sign_in.acr, 255),
        "amr": amr if sign_in.amr and len(amr) <= 255 else None,
        "auth_time": sign_in.auth_time,
    }


def _cut(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]
