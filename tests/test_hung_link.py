"""A database link that hangs (no data, no close: a partition, a dead NAT entry) holds nobody
longer than the documented bound. No cancellation can cross such a link, so the relay shuts the
connection's socket rather than wait for one (store/database.py, _CUT), and the listener cuts
its own connection when a heartbeat goes unanswered (store/invalidation.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from relay.crypto import Sealer
from relay.errors import DatabaseUnavailable
from relay.store.cache import SessionCache
from relay.store.database import Database, make_engine
from relay.store.invalidation import TRUST, Listener
from relay.store.records import Lifetimes, Tokens
from relay.store.sessions import Sessions
from tests.conftest import postgres_database, run_migrations
from tests.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.postgres

TIMEOUT = 1.0  # database.timeout
BOUND = TIMEOUT + 0.5  # the documented bound: the socket is shut then
SLACK = 0.5  # scheduling on a busy machine; the hang without the cut lasts 10 s more
LIFETIMES = Lifetimes(absolute=7200, idle=1800, touch_interval=60)
TOKENS = Tokens(id_token="id-token", access_token=None, refresh_token=None)


def through(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


async def until(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait for ``check``; return when it came true (monotonic)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic()


def test_a_statement_on_a_hung_link_answers_within_the_bound() -> None:
    """A read and a write on pooled connections whose link hangs fail as database.timeout
    within database.timeout + 0.5 s, not after psycopg's cancellation and the pool's reset
    (13 s); once the link heals the pool serves again without a restart."""
    with postgres_database() as url:
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:

            async def go() -> None:
                db = Database(make_engine(through(url, proxy), timeout=TIMEOUT), TIMEOUT)
                try:
                    async with db.autocommit() as conn:  # a pooled connection, then the hang
                        await conn.execute(text("SELECT 1"))
                    proxy.partition()
                    # A pooled connection is cut at the bound; the pool's next one cannot
                    # be opened either, and libpq gives up on it after max(2, timeout) s.
                    for block, bound in ((db.write, BOUND), (db.autocommit, max(2, TIMEOUT))):
                        started = time.monotonic()
                        with pytest.raises(DatabaseUnavailable) as caught:
                            async with block() as conn:
                                await conn.execute(text("SELECT 1"))
                        took = time.monotonic() - started
                        assert caught.value.reason == "database.timeout"
                        assert took < bound + SLACK, f"{block.__name__} took {took:.1f} s"
                    proxy.heal()
                    async with db.autocommit() as conn:
                        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
                finally:
                    await db.dispose()

            asyncio.run(go())


def test_the_listener_notices_a_hung_link_within_its_bound() -> None:
    """The listener's link hangs: the cache stops being trusted within TRUST of the last
    confirmation (so a revocation written meanwhile cannot pass later than that), and the
    listener gives the connection up within database.timeout + 0.5 s, not 12.5 s."""
    with postgres_database() as url:
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:

            async def go() -> None:
                cache = SessionCache(100)
                listener = Listener(through(url, proxy), cache, timeout=TIMEOUT)
                task = asyncio.create_task(listener.run())
                try:
                    await until(cache.trusted, 10, "trusted")
                    proxy.partition()
                    cut = time.monotonic()
                    untrusted = await until(lambda: not cache.trusted(), 5, "untrusted")
                    assert untrusted - cut < TRUST + SLACK
                    lost = await until(lambda: not listener.connected, 15, "loss noticed")
                    assert lost - cut < BOUND + 0.25 + SLACK, f"noticed after {lost - cut:.1f} s"
                    proxy.heal()
                    await until(cache.trusted, 10, "trusted again")
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)

            asyncio.run(go())


def test_a_check_during_a_lapse_waits_for_the_probe_on_its_way_not_the_table() -> None:
    """Trust lapses when a heartbeat answers late (here: its link stalls, then flows again). A
    check in that moment, for a session the cache holds, waits for the probe already sent and
    answers from the cache once it comes back: no table read. Without a probe that can still
    vouch (the link stays down), the wait ends by TRUST after that probe was sent."""
    with postgres_database() as url:
        run_migrations(url)
        parsed = make_url(url)
        with tcp_proxy(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:

            async def go() -> None:
                db = Database(make_engine(url), timeout=TIMEOUT)  # reads go direct
                cache = SessionCache(100)
                sessions = Sessions(db, Sealer("s" * 32), LIFETIMES, cache)
                listener = Listener(through(url, proxy), cache, timeout=TIMEOUT)
                task = asyncio.create_task(listener.run())
                try:
                    await until(cache.trusted, 10, "trusted")
                    now = int(time.time())
                    session = await sessions.create("s1", "alice", {"sub": "alice"}, TOKENS, now)
                    proxy.partition()
                    await until(lambda: not cache.trusted(), 5, "untrusted")
                    check = asyncio.create_task(sessions.get("s1", now))
                    await asyncio.sleep(0)  # it is waiting now, not reading
                    proxy.heal()
                    assert await check is session
                    assert cache.misses == 0, "read the table instead of waiting"

                    proxy.partition()
                    await until(lambda: not cache.trusted(), 5, "untrusted again")
                    waited = time.monotonic()
                    assert await sessions.get("s1", now) is not None  # from the table
                    assert time.monotonic() - waited < TRUST + SLACK
                    assert cache.misses == 1
                finally:
                    proxy.heal()
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await db.dispose()

            asyncio.run(go())
