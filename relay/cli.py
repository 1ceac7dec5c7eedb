"""The ``relay`` command: load config → configure logging → dispatch.

relay serve --config PATH          serve until SIGTERM/SIGINT
relay migrate --config PATH        bring the schema to head
relay prune --config PATH          one prune pass; prints how many rows it removed
relay check-config --config PATH   validate; print the resolved config, secrets masked
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

from relay.config import Config, ConfigError, load_config, masked
from relay.logs import configure_logging


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
        sub.add_argument("--config", required=True, metavar="PATH", help="the TOML config file")
    demo = commands.add_parser("demo", help="try the relay: everything on 127.0.0.1")
    demo.add_argument("--relay-port", type=int, default=4180)
    demo.add_argument("--provider-port", type=int, default=9000)
    demo.add_argument("--app-port", type=int, default=8080)
    demo.add_argument("--database", default="sqlite+aiosqlite:///relay.db", metavar="URL")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from relay.demo.run import run_demo

        return run_demo(args.relay_port, args.provider_port, args.app_port, args.database)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"relay: config error: {line}", file=sys.stderr)
        return 2

    if args.command == "check-config":
        print(json.dumps(masked(config), indent=2))
        return 0
    # One-shot commands keep stdout for their answer; the server logs to stdout.
    stream = sys.stdout if args.command == "serve" else sys.stderr
    configure_logging(config.logging.level, config.logging.format, stream=stream)
    if args.command == "serve":
        return _serve(config)
    if args.command == "migrate":
        return asyncio.run(_migrate(config))
    return asyncio.run(_prune(config))


def _serve(config: Config) -> int:
    from relay.app import SchemaBehind
    from relay.serve import serve

    try:
        asyncio.run(_check_schema(config))
    except SchemaBehind as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return serve(config)


async def _check_schema(config: Config) -> None:
    from relay.app import ensure_schema
    from relay.store.database import make_engine

    engine = make_engine(config.database.url)
    try:
        await ensure_schema(engine, config)
    finally:
        await engine.dispose()


async def _migrate(config: Config) -> int:
    from relay.store.database import make_engine, migrate

    engine = make_engine(config.database.url)
    try:
        before, after = await migrate(engine)
    finally:
        await engine.dispose()
    print(f"schema: {before or 'empty'} -> {after}")
    return 0


async def _prune(config: Config) -> int:
    from relay.pruner import prune_once
    from relay.store.database import Database, make_engine

    db = Database(make_engine(config.database.url), config.database.timeout)
    try:
        result = await prune_once(db, int(time.time()), config.session.prune_batch_size)
    finally:
        await db.dispose()
    if result.skipped:
        print("skipped: another relay is pruning this database")
    else:
        print(f"removed {result.removed} expired rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
