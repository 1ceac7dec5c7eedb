"""The ``relay`` command: load config → configure logging → dispatch.

relay serve --config PATH          serve until SIGTERM/SIGINT
relay demo [--provider-only PUBLIC_URL]   everything on 127.0.0.1 (or only its provider)
relay check-config --config PATH   validate; print the resolved config, secrets masked
                 [--connect]       ...and reach the database and the provider
relay migrate DB                   bring the schema to head
relay prune DB                     one prune pass; prints how many rows it removed
relay sessions list DB [--sub SUB] [--json]   who is signed in
relay sessions revoke DB (--sub SUB | --id HASHPREFIX)   end sessions now; running relays
                 (every replica, and SQLite) notice within 1 s
relay sessions stats DB [--json]   sessions by state

DB is --config PATH (of which only [database], [logging] and session.prune_batch_size are
read: the provider, secrets and access rules need not be there yet) and/or --database-url
URL (over the file's url).

Trouble outside the relay (a config mistake, an unreachable database, a busy port) ends a
command with one line saying what and which key, never a traceback.

The commands that need only the database (migrate, prune, sessions) are in cli_database.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

from relay.cli_database import (
    DATABASE_ONLY,
    add_sessions_parser,
    database_arguments,
    database_problem,
    run_database_command,
)
from relay.config import Config, ConfigError, load_config, masked
from relay.errors import DatabaseUnavailable, ProviderError
from relay.logs import configure_logging
from relay.store.database import Database, translated


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="OpenID Connect login relay")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "serve until SIGTERM/SIGINT"),
        ("migrate", "bring the database schema to head"),
        ("prune", "delete expired sessions once and print how many"),
        ("check-config", "validate the config and print it, secrets masked"),
    ):
        sub = commands.add_parser(name, help=help_text)
        if name in DATABASE_ONLY:
            database_arguments(sub)
        else:
            sub.add_argument("--config", required=True, metavar="PATH", help="the TOML config")
        if name == "check-config":
            sub.add_argument(
                "--connect", action="store_true", help="also reach the database and provider"
            )
    add_sessions_parser(commands)
    demo = commands.add_parser("demo", help="try the relay: everything on 127.0.0.1")
    demo.add_argument("--relay-port", type=int, default=4180)
    demo.add_argument("--provider-port", type=int, default=9000)
    demo.add_argument("--app-port", type=int, default=8080)
    demo.add_argument("--database", default="sqlite+aiosqlite:///relay.db", metavar="URL")
    demo.add_argument(
        "--provider-only",
        metavar="PUBLIC_URL",
        help="run only the development provider, for your own relay at PUBLIC_URL "
        "(its [server] public_url): try a proxy recipe on this machine",
    )
    args = parser.parse_args(argv)

    if args.command == "demo":
        from relay.demo.run import run_demo, run_provider

        if args.provider_only is not None:
            return run_provider(args.provider_port, args.provider_only)
        return run_demo(args.relay_port, args.provider_port, args.app_port, args.database)

    if args.command in DATABASE_ONLY:
        return run_database_command(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"relay: config error: {line}", file=sys.stderr)
        return 2

    if args.command == "check-config":
        return _check_config(config, connect=args.connect)
    configure_logging(config.logging.level, config.logging.format, stream=sys.stdout)
    try:
        return _serve(config)
    except DatabaseUnavailable as exc:
        print(f"relay: {database_problem(config.database, exc)}", file=sys.stderr)
        return 1


def _check_config(config: Config, *, connect: bool) -> int:
    try:
        print(json.dumps(masked(config), indent=2))
        if not connect:
            return 0
        configure_logging("error", config.logging.format, stream=sys.stderr)
        problems = asyncio.run(_reach(config))
        for line in problems:
            print(f"relay: {line}", file=sys.stderr)
        if not problems:
            print("database: ok\nprovider: ok")
        return 1 if problems else 0
    except BrokenPipeError:
        # `relay check-config | head`: the reader has gone, which is no error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _reach(config: Config) -> list[str]:
    """What a running relay would need: its database at the schema it needs, and the
    provider's metadata for exactly provider.issuer. One line per problem."""
    import httpx2

    from relay.oidc.discovery import Discovery
    from relay.store.database import SchemaBehind, ensure_schema, make_engine

    problems = []
    engine = make_engine(
        config.database.url, timeout=config.database.timeout, pooled=config.database.pooled
    )
    try:
        with translated():
            if config.database.is_sqlite:  # `relay serve` migrates SQLite itself
                await Database(engine, config.database.timeout).ping()
            else:
                await ensure_schema(engine)
    except DatabaseUnavailable as exc:
        problems.append(database_problem(config.database, exc))
    except SchemaBehind as exc:
        problems.append(str(exc))
    finally:
        await engine.dispose()
    for provider in config.login_providers:
        async with httpx2.AsyncClient(timeout=provider.timeout) as http:
            discovery = Discovery(
                http, provider.issuer, provider.metadata_ttl, time.time, provider.issuer_template
            )
            try:
                await discovery.get()
            except ProviderError as exc:
                cause = exc.__cause__
                detail = cause.detail if isinstance(cause, ProviderError) else exc.detail
                reason = cause.reason if isinstance(cause, ProviderError) else exc.reason
                which = "" if not config.providers else f" {provider.name!r}"
                problems.append(
                    f"cannot use the provider{which} (provider.issuer = {provider.issuer}): "
                    f"{detail or reason}"
                )
    return problems


def _serve(config: Config) -> int:
    from relay.serve import serve
    from relay.store.database import SchemaBehind

    try:
        asyncio.run(_check_schema(config))
    except SchemaBehind as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return serve(config)


async def _check_schema(config: Config) -> None:
    from relay.store.database import ensure_schema, make_engine

    engine = make_engine(
        config.database.url, timeout=config.database.timeout, pooled=config.database.pooled
    )
    try:
        await ensure_schema(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
