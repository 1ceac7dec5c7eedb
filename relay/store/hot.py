"""The statement an uncached check sends (the session lookup), on psycopg directly
(PostgreSQL). Its touch is not on the check's way: store/touches.py writes touches in
batches.

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
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq
from psycopg.abc import Loader
from psycopg.errors import error_from_result
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url

from relay.store.database import _GRACE, cut_off, translated

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# How long a connection beyond the first may sit idle before it is closed: the pool grows
# for a burst of cache misses and gives the server its backends back afterwards.
MAX_IDLE = 60.0


class HotStatements:
    """Up to ``size`` connections for the lookup; see the module doc."""

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
        self._prepared: dict[int, set[bytes]] = {}  # id(connection) -> statement names
        self._statements: dict[str, tuple[bytes, bytes]] = {}
        self._loaders: dict[int, Loader] = {}
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
        result = await self._call(sql, params)
        if result.ntuples == 0:
            return None
        row = []
        for column in range(result.nfields):
            value = result.get_value(0, column)
            if value is not None:
                value = self._loader(result.ftype(column)).load(value)
            row.append(value)
        return tuple(row)

    async def _call(self, sql: str, params: tuple[Any, ...]) -> pq.abc.PGresult:
        for observe in self.observers:
            observe(sql)
        with translated():
            async with asyncio.timeout(self.timeout + _GRACE), self._slots:
                conn = await self._take()
                healthy = False
                try:
                    with cut_off(conn, self.timeout):
                        result = await self._run(conn, sql, params)
                    healthy = True
                    return result
                finally:
                    await self._give_back(conn, healthy)

    async def _run(self, conn: Connection, sql: str, params: tuple[Any, ...]) -> pq.abc.PGresult:
        """One statement as one round trip on libpq (psycopg.pq), prepared on the server once
        per connection unless pooled. psycopg's own ``execute`` builds a cursor, converts the
        query and steps a generator per message: about 150 µs of CPU per lookup here, against
        60-85 µs this way. Parameters are str or int, sent as text."""
        pgconn = conn.pgconn
        name, text = self._statement(sql)
        values = [None if value is None else str(value).encode() for value in params]
        if not self._prepare:
            pgconn.send_query_params(text, values)
            return _checked(await _result(pgconn), conn)
        prepared = self._prepared.setdefault(id(conn), set())
        if name not in prepared:
            pgconn.send_prepare(name, text)
            _checked(await _result(pgconn), conn)
            prepared.add(name)
        pgconn.send_query_prepared(name, values)
        return _checked(await _result(pgconn), conn)

    def _statement(self, sql: str) -> tuple[bytes, bytes]:
        """Its name on the server and its text with libpq's numbered placeholders."""
        found = self._statements.get(sql)
        if found is None:
            parts = sql.split("%s")
            text = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
            found = self._statements[sql] = (
                f"relay_hot_{len(self._statements)}".encode(),
                text.encode(),
            )
        return found

    def _loader(self, oid: int) -> Loader:
        """psycopg's own text loader for a column type (the relay registers no adapters of
        its own, and the database speaks UTF-8)."""
        loader = self._loaders.get(oid)
        if loader is None:
            found = psycopg.adapters.get_loader(oid, pq.Format.TEXT)
            if found is None:
                raise TypeError(f"no psycopg loader for type {oid}")
            loader = self._loaders[oid] = found(oid, None)
        return loader

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
        self._prepared.pop(id(conn), None)
        with contextlib.suppress(psycopg.Error, OSError):
            # Its socket may hang: no close waits longer than the bound.
            async with asyncio.timeout(self.timeout):
                await conn.close()


_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


async def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """The answer to the one query just sent: flush it, then read until libpq has every
    result of it (the last is None), waiting on the socket in the event loop."""
    loop = asyncio.get_running_loop()
    while pgconn.flush():
        await _ready(loop.add_writer, loop.remove_writer, pgconn.socket)
    first: pq.abc.PGresult | None = None
    while True:
        pgconn.consume_input()  # a shut or dead socket raises here: a psycopg error
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                if first is None:
                    raise psycopg.OperationalError("no result from the server")
                return first
            if first is None:
                first = result
        await _ready(loop.add_reader, loop.remove_reader, pgconn.socket)


async def _ready(add: Callable[..., None], remove: Callable[[int], object], fileno: int) -> None:
    waiter = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add(fileno, wake)
    try:
        await waiter
    finally:
        remove(fileno)


def _checked(result: pq.abc.PGresult, conn: Connection) -> pq.abc.PGresult:
    if result.status not in _OK:
        raise error_from_result(result, encoding=conn.info.encoding)
    return result
