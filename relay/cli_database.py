"""The commands that need only the database: ``relay migrate``, ``relay prune`` and ``relay
sessions list|stats|revoke``. They read ``[database]`` and ``[logging]`` (and
``session.prune_batch_size``) of a config file whose other sections may be missing or
unfinished, or take ``--database-url`` (config.load_database_config), so an operator can use
them before the provider, the secrets and the access rules are filled in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from relay.config import ConfigError, DatabaseConfig, DatabaseOnly, load_database_config
from relay.errors import DatabaseUnavailable
from relay.logs import configure_logging
from relay.store.database import Database, translated
from relay.store.listing import MIN_PREFIX
from relay.store.revocation import Ended, Revocation

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


# The commands that need only the database: [database] (and [logging]) of a config file, the
# rest of it unfinished or missing, or no file at all with --database-url.
DATABASE_ONLY = ("migrate", "prune", "sessions")


def database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="PATH", help="the TOML config file (only [database] is read)"
    )
    parser.add_argument(
        "--database-url", metavar="URL", help="the database, instead of (or over) the config's"
    )


def run_database_command(args: argparse.Namespace) -> int:
    if args.config is None and args.database_url is None:
        print(
            f"relay {args.command}: give --config PATH or --database-url URL "
            "(for `relay demo`'s database: --database-url sqlite+aiosqlite:///relay.db)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_database_config(args.config, args.database_url)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"relay: config error: {line}", file=sys.stderr)
        return 2
    # One-shot commands keep stdout for their answer.
    configure_logging(settings.logging.level, settings.logging.format, stream=sys.stderr)
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings.database))
        if args.command == "sessions":
            return asyncio.run(_sessions(settings.database, args))
        return asyncio.run(_prune(settings))
    except DatabaseUnavailable as exc:
        print(f"relay: {database_problem(settings.database, exc)}", file=sys.stderr)
        return 1


def database_problem(database: DatabaseConfig, exc: DatabaseUnavailable) -> str:
    detail = exc.detail or exc.reason
    if "unsupported startup parameter" in detail:
        # PgBouncer (and other transaction poolers) refuse the timeouts sent at connect.
        return (
            f"cannot use the database at {database.display_url} (database.url): a "
            "connection pooler refuses startup parameters: set [database] pooled = true, "
            "and listen_url to a direct connection"
        )
    return f"cannot use the database at {database.display_url} (database.url): {detail}"


def _engine(database: DatabaseConfig) -> AsyncEngine:
    from relay.store.database import make_engine

    return make_engine(database.url, timeout=database.timeout, pooled=database.pooled)


async def _migrate(database: DatabaseConfig) -> int:
    from relay.store.database import migrate

    engine = _engine(database)
    try:
        with translated():
            before, after = await migrate(engine)
    finally:
        await engine.dispose()
    print(f"schema: {before or 'empty'} -> {after}")
    return 0


async def _prune(settings: DatabaseOnly) -> int:
    from relay.pruner import prune_once

    db = Database(_engine(settings.database), settings.database.timeout)
    try:
        result = await prune_once(db, int(time.time()), settings.prune_batch_size)
    finally:
        await db.dispose()
    if result.skipped:
        print("skipped: another relay is pruning this database")
    else:
        print(f"removed {result.removed} expired rows")
    return 0


def add_sessions_parser(commands: Any) -> None:  # argparse's _SubParsersAction is private
    sessions = commands.add_parser("sessions", help="list, revoke and count sessions")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the sessions, a table (or JSON lines)")
    listing.add_argument("--sub", metavar="SUB", help="only this user's")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser(
        "revoke",
        help="end sessions now; a running relay notices within 1 s",
        description="End sessions now. A running relay notices within 1 s: every replica on "
        "PostgreSQL, the relay on SQLite (through the ended-sessions log).",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--sub", metavar="SUB", help="every session of this user")
    which.add_argument(
        "--id",
        metavar="HASHPREFIX",
        help=f"the one session whose id (as the logs show it) starts so; {MIN_PREFIX}+ hex",
    )
    stats = actions.add_parser("stats", help="how many sessions are active, pending, expired")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    for action in (listing, revoke, stats):
        database_arguments(action)


async def _sessions(database: DatabaseConfig, args: argparse.Namespace) -> int:
    import secrets

    from relay.crypto import Sealer
    from relay.store.cache import SessionCache
    from relay.store.revocation import Revocation

    db = Database(_engine(database), database.timeout)
    try:
        if args.action == "list":
            return await _list_sessions(db, args.sub, as_json=args.json)
        if args.action == "stats":
            return await _session_stats(db, as_json=args.json)
        # Ending sessions opens no sealed token, so it needs no session.secret: a key of its
        # own, never used. No cache of its own either: the running relays' drop the sessions.
        revocation = Revocation(db, Sealer(secrets.token_urlsafe(32)), SessionCache(0))
        return await _revoke(revocation, args.sub, args.id)
    finally:
        await db.dispose()


async def _list_sessions(db: Database, subject: str | None, *, as_json: bool) -> int:
    from relay.devices import describe
    from relay.store.database import text_problem
    from relay.store.listing import MAX_PAGE, list_sessions, printable

    if subject is not None and (problem := text_problem(subject)) is not None:
        print(f"relay: --sub {printable(subject)} {problem}", file=sys.stderr)
        return 2
    now = int(time.time())
    rows, after = [], None
    while True:
        page = await list_sessions(db, now, subject=subject, after=after)
        rows.extend(page)
        if len(page) < MAX_PAGE:
            break
        after = page[-1].id_hash
    if as_json:
        for row in rows:
            print(json.dumps(row.public()))
        return 0
    table = [("ID", "SUBJECT", "EMAIL", "STATE", "CREATED", "LAST ACCESS", "EXPIRES", "DEVICE")]
    table += [
        (
            row.short_id,
            printable(row.subject or "-"),
            printable(row.email or "-"),
            row.state,
            _when(row.created_at),
            _when(row.last_accessed_at),
            _when(row.expires_at),
            # Last: the one column with spaces in it. Where from is in --json ("address").
            printable(describe(row.sign_in.user_agent)) if row.subject else "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    return 0


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


async def _session_stats(db: Database, *, as_json: bool) -> int:
    from relay.store.stats import count_sessions

    counts = await count_sessions(db, int(time.time()))
    values = {"active": counts.active, "pending": counts.pending, "expired": counts.expired}
    if as_json:
        print(json.dumps(values))
    else:
        for name, value in values.items():
            print(f"{name}: {value}")
    return 0


async def _revoke(revocation: Revocation, subject: str | None, id_prefix: str | None) -> int:
    import getpass
    import socket

    from relay.audit import sessions_ended
    from relay.crypto import short_hash
    from relay.store.database import text_problem
    from relay.store.listing import AmbiguousPrefix, hash_prefix, printable

    def audit(ended: list[Ended], asked: str) -> None:
        sessions_ended(
            ended, via="cli", by=getpass.getuser(), source=socket.gethostname(), asked=asked
        )

    if subject is not None:
        problem = text_problem(subject)
        if problem is not None:  # bytes that are not UTF-8 reach argv as lone surrogates
            print(f"relay: --sub {printable(subject)} {problem}", file=sys.stderr)
            return 2
        ended = await revocation.revoke_subject(subject)
        audit(ended, subject)
        plural = "" if len(ended) == 1 else "s"
        print(f"ended {len(ended)} session{plural} of {printable(subject)}")
        if not ended:
            # Most often a subject as the provider does not spell it (the demo's users are
            # demo-alice and demo-bob): say so, rather than succeed at nothing.
            print(
                f"relay: no active session has the subject {printable(subject)}; "
                "`relay sessions list` shows each session's subject",
                file=sys.stderr,
            )
            return 1
        return 0
    prefix = hash_prefix(id_prefix or "")
    if prefix is None:
        print(
            f"relay: --id: give {MIN_PREFIX} to 64 hex characters of a session's id "
            "(as `relay sessions list` and the logs show it)",
            file=sys.stderr,
        )
        return 2
    try:
        ended = await revocation.revoke_prefix(prefix)
    except AmbiguousPrefix as exc:
        print(
            f"relay: {exc.matches} active sessions' ids start with {prefix}: nothing ended; "
            "give more characters",
            file=sys.stderr,
        )
        return 1
    audit(ended, prefix)
    if not ended:
        print(f"relay: no active session's id starts with {prefix}", file=sys.stderr)
        return 1
    print(f"ended 1 session ({short_hash(ended[0].id_hash)})")
    return 0
