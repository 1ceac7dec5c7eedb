"""The engine, the one place database errors become relay errors, and the schema's state
against the migrations in migrations/.

Every statement the store sends goes through :class:`Database`: ``read()`` for a lookup (an
autocommit connection: no BEGIN or ROLLBACK around one SELECT), ``write()`` for a
transaction. Both are bounded in time and turn whatever the driver, the pool or the network
raise into :class:`~relay.errors.DatabaseUnavailable` (503), ``from`` the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from relay.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from relay.store.hot import HotStatements

log = structlog.get_logger("relay.store")

# What an unreachable, refusing, locked or slow database looks like from here. SQLAlchemy's
# own errors (a statement that does not compile...) are bugs, left to crash loudly.
_FAILURES = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    psycopg.Error,
    sqlite3.Error,
    OSError,
    TimeoutError,
)
# A server-side timeout (statement_timeout, lock_timeout) or our own bound ran out.
_TIMEOUTS = (
    TimeoutError,
    sa_exc.TimeoutError,
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
)
# The server cancels a statement after ``timeout``; our own bounds wait a little longer, so
# that the server's cancellation (which leaves the connection usable) normally comes first.
# At ``timeout + _CUT`` a PostgreSQL connection's socket is shut: on a link that hangs (no
# data, no close) no cancellation can arrive, and psycopg's attempt to send one waits 5 s and
# the pool's reset as long again (13 s measured). ``_GRACE`` is the last resort, for waits
# with no socket to shut (the pool's queue, SQLite).
_CUT = 0.5
_GRACE = 1.0


def text_problem(value: str) -> str | None:
    """Why the database cannot store ``value`` as text, or None. Asked of text from outside
    (an admin's request, an operator's argument, a provider's answer) before a statement
    carries it: the driver's refusal would otherwise look like an outage (a 503) or a crash."""
    if "\x00" in value:
        return "contains a NUL character, which PostgreSQL text cannot hold"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def make_engine(
    url: str,
    *,
    timeout: float = 2.0,
    pool_size: int = 10,
    max_overflow: int = 0,
    pooled: bool = False,
) -> AsyncEngine:
    """An engine whose every wait is bounded by ``timeout`` seconds: a connection from the pool,
    a new connection, a statement, a lock. SQL parameters never reach an error message.
    ``pooled``: through a transaction pooler ([database] pooled), which refuses startup
    options and loses server-side prepared statements between transactions; the server's
    own timeouts are then not set, and the relay's bound (Database, _CUT) is the bound."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, hide_parameters=True)
        busy_ms = int(timeout * 1000)

        def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets /auth read while the pruner deletes; busy_timeout waits out a writer
            # (up to the bound) instead of failing at once with "database is locked".
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": max(2, round(timeout)),  # libpq's floor is 2 seconds
    }
    if pooled:
        connect_args["prepare_threshold"] = None
    else:
        ms = int(timeout * 1000)
        connect_args["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    return create_async_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=timeout,
        # No pre-ping: a dead pooled connection fails its statement, which is translated into
        # a 503 like any other failure and invalidates the pool; pinging cost a round trip
        # on every checkout.
        pool_pre_ping=False,
        connect_args=connect_args,
    )


def shut(driver_connection: Any) -> bool:
    """Shut a psycopg connection's socket both ways, so that whatever waits on it fails at once
    (a hung link delivers neither an answer nor a close). The descriptor stays psycopg's to
    close; False if there was nothing to shut."""
    try:
        fd = driver_connection.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (psycopg.Error, OSError, AttributeError):
        return False
    return True


class Deadline:
    """Shuts a connection's socket if the block it guards runs past ``seconds`` (see _CUT)."""

    def __init__(self, seconds: float, driver_connection: Any) -> None:
        self.fired = False
        self._conn = driver_connection
        self._handle = asyncio.get_running_loop().call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.fired = shut(self._conn)

    def cancel(self) -> None:
        self._handle.cancel()


@contextlib.contextmanager
def cut_off(driver_connection: Any, timeout: float) -> Iterator[None]:
    """Guard a block on a PostgreSQL connection: at ``timeout + _CUT`` its socket is shut, and
    what fails then is a ``database.timeout``; the driver's error is chained."""
    deadline = Deadline(timeout + _CUT, driver_connection)
    try:
        yield
    except _FAILURES as exc:
        if deadline.fired:
            raise DatabaseUnavailable(
                "database.timeout", f"no answer within {timeout + _CUT:g} s: connection closed"
            ) from exc
        raise
    finally:
        deadline.cancel()


def failure(exc: BaseException) -> DatabaseUnavailable:
    """The relay error for a database failure: a reason slug and the driver's first line."""
    cause = getattr(exc, "orig", None) or exc
    reason = "database.timeout" if isinstance(cause, _TIMEOUTS) else "database.unavailable"
    if isinstance(exc, sa_exc.TimeoutError):
        reason = "database.timeout"  # the pool: every connection busy for the whole bound
    first_line = (str(cause).strip().splitlines() or [""])[0][:200]
    detail = f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__
    return DatabaseUnavailable(reason, detail)


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """The one place a database failure becomes a relay error (used by Database, and by the
    CLI's one-shot commands around their engine)."""
    try:
        yield
    except _FAILURES as exc:
        raise failure(exc) from exc


class Database:
    """The engine, bounded in time and with its errors translated; the store's only door."""

    def __init__(self, engine: AsyncEngine, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self.is_postgres = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # SQLite has one writer at a time, and its busy handler is no queue: a writer polls
        # for the lock and, under a burst of logins, some poll past busy_timeout while later
        # ones slip in ("database is locked", a 503, measured at 32 browsers signing in at
        # once). The process's transactions take turns here instead, first come first served;
        # SQLite serves one process (README), so this is every writer but the pruner's
        # batches and single-statement autocommit updates, which still wait on busy_timeout.
        self._one_writer = contextlib.nullcontext() if self.is_postgres else asyncio.Lock()
        # PostgreSQL, in `relay serve`: the uncached check's lookup on a psycopg pool
        # of their own, prepared (store/hot.py); None: those go through the engine too.
        self.hot: HotStatements | None = None

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements each commit on their own (a lookup, a batch of
        touches, a lease UPDATE): no transaction around a single statement."""
        with translated():
            async with asyncio.timeout(self.timeout + _GRACE):
                async with self._autocommit.connect() as conn, self._bounded(conn):
                    yield conn

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed when the block ends, rolled back if it raises. On SQLite
        the wait for the process's previous writer counts against the same bound."""
        with translated():
            async with asyncio.timeout(self.timeout + _GRACE):
                async with self._one_writer, self.engine.begin() as conn, self._bounded(conn):
                    yield conn

    @contextlib.asynccontextmanager
    async def _bounded(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """On PostgreSQL, shut the connection's socket at ``timeout + _CUT`` (see _CUT); what
        then fails is a timeout, and SQLAlchemy drops the connection instead of resetting it."""
        if not self.is_postgres:
            yield
            return
        driver_connection = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        with cut_off(driver_connection, self.timeout):
            yield

    @contextlib.asynccontextmanager
    async def maintenance(self) -> AsyncIterator[AsyncConnection]:
        """A connection for housekeeping that commits as it goes (the pruner's batches): each
        statement is bounded by the server, the whole pass is not."""
        with translated():
            async with self.engine.connect() as conn:
                yield conn

    async def ping(self) -> None:
        async with self.autocommit() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        if self.hot is not None:
            await self.hot.close()
        await self.engine.dispose()


def migrations_dir() -> Path:
    """migrations/ beside the package in a checkout, or its copy inside an installed wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the alembic migrations directory is missing from this install")


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


async def migrate(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema to ``revision``; return (revision before, revision after)."""

    def upgrade(connection: Connection) -> tuple[str | None, str | None]:
        before = _current_revision(connection)
        command.upgrade(_alembic_config(connection), revision)
        return before, _current_revision(connection)

    async with engine.begin() as conn:
        return await conn.run_sync(upgrade)


class SchemaBehind(Exception):
    """The database is not at the migrations' head; ``relay migrate`` fixes it."""


async def ensure_schema(engine: AsyncEngine) -> None:
    """At head, or made so on SQLite (the embedded default migrates itself); else refuse.
    A database that cannot be reached is a DatabaseUnavailable, as on every other path."""
    with translated():
        current, head = await current_revision(engine), head_revision()
        if current == head:
            return
        if engine.dialect.name == "sqlite":
            before, after = await migrate(engine)
            log.info("database.migrated", before=before, after=after)
            return
    raise SchemaBehind(
        f"database schema is at {current or 'nothing'}, this relay needs {head}: "
        "run `relay migrate --config PATH` first"
    )
