"""The in-process cache of live sessions that keeps the database off the hot path.

What makes a cached answer safe is not a TTL:

- Expiry (idle and absolute) is judged on every hit against the clock, from the cached
  timestamps. Those can only be older than the row's (a touch elsewhere moves them forward),
  so the cache may think a session expired early, never late; the store then asks the table.
- Ending a session (logout, back-channel logout, revocation) invalidates its entry here at
  once, and in other processes through PostgreSQL's LISTEN/NOTIFY (store/invalidation.py)
  or, on SQLite, the ended-sessions log (store/sqlite_watch.py).
- The cache is *trusted* only while ``trusted()`` says so: while the invalidation listener
  (PostgreSQL) or watcher (SQLite) has confirmed, less than its bound ago, that it still
  hears of every ending. An untrusted cache answers nothing and takes nothing in. (The
  default, always, is for a cache nobody else can end sessions behind, like the CLI's.)
- A lookup that raced an invalidation does not put a stale row back: every invalidation
  bumps ``generation``, and ``put`` refuses an entry read under an older one.

Misses are remembered too, briefly (``miss_ttl`` seconds, at most ``max_entries``): a
cookie that names no session (a forged or long-expired one, sent again and again) costs
one SELECT per window, not one per request. This memory needs neither trust nor
invalidations, since ending sessions only makes a miss truer; what could make it wrong is a
session *appearing* under a remembered id. It is remembered only when the table had no
active row by that hash, and a session's id is drawn (32 random bytes) when the session is
created and handed to the browser only after the row commits: no replica can have looked it
up before, so no replica can hold a miss for it. A browser that sent an old cookie and then
signs in gets a new id, never its old one back. ``born`` (from ``Sessions.create``) also
clears a miss for the id on this replica, and a miss read before a create here is not
remembered (the ``births`` counter, as ``generation`` does for ``put``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from relay.store.records import ActiveSession


@dataclass(slots=True)
class CachedSession:
    session: ActiveSession
    # A touch of this session is on its way to the database: the other requests for it do not
    # send one of their own.
    touching: bool = False


def _always() -> bool:
    return True


async def _never() -> bool:
    return False


class SessionCache:
    def __init__(
        self, max_entries: int, trusted: Callable[[], bool] = _always, *, miss_ttl: int = 0
    ) -> None:
        self._entries: OrderedDict[str, CachedSession] = OrderedDict()
        self._max = max_entries
        self.trusted = trusted
        # While untrusted: waits for the listener's confirmation on its way, if there is one
        # that can vouch for the cache now (store/invalidation.py), and says whether it did.
        self.vouch: Callable[[], Awaitable[bool]] = _never
        self.generation = 0
        self.hits = self.misses = self.invalidations = 0
        # id hash -> the clock second until which it is known to name no session
        self._missed: OrderedDict[str, int] = OrderedDict()
        self._miss_ttl = miss_ttl if max_entries > 0 else 0
        self.births = 0
        self.misses_remembered = 0  # lookups answered "no such session" from _missed
        # Set while the cache is empty for want of a warm start (store/warm.py): at the start,
        # and by every flush. ``flushes`` tells a warm start that the cache was emptied under
        # it; ``_ended`` collects what ended while one runs (it read an older snapshot).
        self.emptied = asyncio.Event()
        self.emptied.set()
        self.flushes = 0
        self._ended: set[str] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, id_hash: str) -> CachedSession | None:
        """The cached session, if the cache may be believed right now and holds it. (The
        store counts hits and misses: it knows which lookups it answered from here.)"""
        entry = self._entries.get(id_hash)
        if entry is None or not self.trusted():
            return None
        self._entries.move_to_end(id_hash)
        return entry

    def held(self, id_hash: str) -> CachedSession | None:
        """The entry, trusted or not: only for riding out a database outage, which decides
        when it may answer (store/outage.py). Entries stay put while untrusted, as no ``put``
        is taken then, and ``invalidate`` still drops the ones that end here."""
        return self._entries.get(id_hash)

    def put(self, id_hash: str, entry: CachedSession, generation: int) -> None:
        """Remember a session read from the table when ``generation`` was current."""
        if generation != self.generation or not self.trusted() or self._max == 0:
            return
        self._entries[id_hash] = entry
        self._entries.move_to_end(id_hash)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    @property
    def room(self) -> int:
        return max(0, self._max - len(self._entries))

    def begin_warm(self) -> None:
        """A warm start is about to read the table: remember what ends from now on."""
        self._ended = set()

    def end_warm(self) -> None:
        self._ended = None

    def put_cold(self, id_hash: str, entry: CachedSession, flushes: int) -> bool:
        """Add a session loaded by a warm start, as the least recently used (the table's
        order is most recent first), unless the cache holds it already (a check was there
        first), it ended since the warm start began, or the cache is full. False: the warm
        start must stop (the cache was flushed or is untrusted: what it read may be stale)."""
        if flushes != self.flushes or not self.trusted() or len(self._entries) >= self._max:
            return False
        if id_hash in self._entries or (self._ended is not None and id_hash in self._ended):
            return True
        self._entries[id_hash] = entry
        self._entries.move_to_end(id_hash, last=False)
        return True

    def known_missing(self, id_hash: str, now: int) -> bool:
        """The table had no active session by this hash less than miss_ttl seconds ago."""
        until = self._missed.get(id_hash)
        if until is None:
            return False
        if now >= until:
            del self._missed[id_hash]
            return False
        self.misses_remembered += 1
        return True

    def remember_missing(self, id_hash: str, now: int, births: int) -> None:
        """The table has no active row by this hash, read when ``births`` was current."""
        if self._miss_ttl == 0 or births != self.births:
            return
        self._missed[id_hash] = now + self._miss_ttl
        self._missed.move_to_end(id_hash)
        while len(self._missed) > self._max:
            self._missed.popitem(last=False)

    def born(self, id_hash: str) -> None:
        """A session was created under this hash: it is missing no more."""
        self.births += 1
        self._missed.pop(id_hash, None)

    @property
    def missing(self) -> int:
        return len(self._missed)

    def discard(self, id_hash: str) -> None:
        """Forget an entry that is merely out of date (no session ended)."""
        self._entries.pop(id_hash, None)

    def invalidate(self, id_hashes: Iterable[str]) -> None:
        """These sessions ended: forget them, and anything read before now."""
        self.generation += 1
        for id_hash in id_hashes:
            if self._ended is not None:
                self._ended.add(id_hash)
            if self._entries.pop(id_hash, None) is not None:
                self.invalidations += 1

    def flush(self) -> None:
        """Forget everything: invalidations may have been missed."""
        self.generation += 1
        self.flushes += 1
        self.invalidations += len(self._entries)
        self._entries.clear()
        self.emptied.set()
