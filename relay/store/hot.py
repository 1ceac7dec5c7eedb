"""The two statements an uncached check sends (the session lookup and its touch), on psycopg
directly (PostgreSQL).

Through SQLAlchemy one lookup cost about 380 µs of CPU here: a pool checkout through the
async/greenlet bridge, the statement's cache key, the result machinery. The same SELECT as
a server-side prepared statement on a psycopg_pool connection costs about 90 µs, one round
trip, no transaction. Everything else (the schema, migrations, logins, logouts, refresh
leases, the pruner) stays on SQLAlchemy: it is not on the hot path.

Same rules as :class:`~relay.store.database.Database`: every wait bounded (a free slot, a
new connection, a statement: the socket is shut past the bound), every failure translated
into a 503 in ``translated()``. Behind a transaction pooler (``[database] pooled``) nothing
is prepared and no startup options are sent.

Why a few lines of pool here rather than psycopg_pool: psycopg_pool opens connections in a
background worker and lets a check wait for one until its timeout, so a refused connection
(a database that is down, the signal that starts ``[cache] outage_grace``) became a 2-second
wait and a ``database.timeout``; here the check that needs a connection opens it, and a
refusal is a ``database.unavailable`` at once, as through SQLAlchemy's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url

from relay.store.database import _GRACE, cut_off, translated

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# How long a connection beyond the first may sit idle before it is closed: the pool grows
# for a burst of cache misses and gives the server its backends back afterwards.
MAX_IDLE = 60.0


class HotStatements:
    """Up to ``size`` connections for the lookup and the touch; see the module doc."""

    def __init__(self, url: str, *, timeout: float, size: int, pooled: bool) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.timeout = timeout
        self._prepare = not pooled
        self._connect_args: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, round(timeout)),  # libpq's floor is 2 seconds
        }
        if pooled:
            self._connect_args["prepare_threshold"] = None
        else:
            ms = int(timeout * 1000)
            self._connect_args["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[Connection, float]] = []  # oldest first; taken from the end
        self._generation = 0  # renew() retires every connection opened before it
        self._born: dict[int, int] = {}  # id(connection) -> generation
        # Tests count the statements a check sends (tests/conftest.py count_statements).
        self.observers: list[Callable[[str], None]] = []

    async def open(self) -> None:
        """Nothing to do: connections are opened by the checks that need them."""

    async def close(self) -> None:
        await self.renew()

    async def renew(self) -> None:
        """Close every idle connection and retire those in use (an outage ridden out: they are
        dead, or talk to the old primary); the next checks open new ones."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await self._discard(conn)

    async def fetch_one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        for observe in self.observers:
            observe(sql)
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params, prepare=self._prepare)
            return await cursor.fetchone()

    async def execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one statement; how many rows it changed."""
        for observe in self.observers:
            observe(sql)
        async with self._connection() as conn:
            cursor = await conn.execute(sql, params, prepare=self._prepare)
            return cursor.rowcount

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        with translated():
            async with asyncio.timeout(self.timeout + _GRACE), self._slots:
                conn = await self._take()
                healthy = False
                try:
                    with cut_off(conn, self.timeout):
                        yield conn
                    healthy = True
                finally:
                    await self._give_back(conn, healthy)

    async def _take(self) -> Connection:
        now = time.monotonic()
        while len(self._idle) > 1 and self._idle[0][1] < now - MAX_IDLE:
            await self._discard(self._idle.pop(0)[0])
        if self._idle:
            return self._idle.pop()[0]
        conn: Connection = await psycopg.AsyncConnection.connect(
            self._conninfo, **self._connect_args
        )
        self._born[id(conn)] = self._generation
        return conn

    async def _give_back(self, conn: Connection, healthy: bool) -> None:
        if (
            healthy
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
            and self._born.get(id(conn)) == self._generation
        ):
            self._idle.append((conn, time.monotonic()))
        else:
            await self._discard(conn)

    async def _discard(self, conn: Connection) -> None:
        self._born.pop(id(conn), None)
        with contextlib.suppress(psycopg.Error, OSError):
            # Its socket may hang: no close waits longer than the bound.
            async with asyncio.timeout(self.timeout):
                await conn.close()
