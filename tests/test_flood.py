"""A flood of /login: every attempt would write a pending row, so the table must stay bounded
while real users keep getting through, and an office behind one address must get in."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, text

from relay.ratelimit import LoginLimiter, client_bucket
from tests.conftest import callback_path, provider_redirect, sign_in
from tests.provider import TestProvider

NAVIGATE = {"Accept": "text/html"}


def pending_rows(db: Engine) -> int:
    with db.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM sessions WHERE status = 'pending'"))
        return int(count.scalar_one())


def login_from(relay: Any, address: str, **headers: str) -> int:
    """One cookie-less /login through the trusted proxy, for the client at ``address``."""
    relay.cookies.clear()
    forwarded = {"X-Forwarded-For": address, **NAVIGATE, **headers}
    return int(relay.get("/login", headers=forwarded).status_code)


def test_thousands_of_logins_from_one_client_stay_bounded(
    make_relay: Any, provider: TestProvider, db: Engine
) -> None:
    """3000 cookie-less /login requests from one address (behind the trusted proxy) leave at
    most about login_rate pending rows; users at other addresses still sign in. (The window
    slides in real time: a run that crosses a minute boundary may get a few more through.)"""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "30/minute"}) as relay:
        statuses: dict[int, int] = {}
        for _ in range(3000):
            status = login_from(relay, "203.0.113.66")
            statuses[status] = statuses.get(status, 0) + 1
        assert set(statuses) == {302, 429}
        assert 30 <= statuses[302] <= 60
        assert pending_rows(db) == statuses[302]

        for user in ("198.51.100.1", "198.51.100.2"):
            relay.cookies.clear()
            relay.headers["X-Forwarded-For"] = user
            done = sign_in(relay, provider)
            assert done.status_code == 302
            assert relay.get("/auth").status_code == 200


def test_an_office_behind_one_address_gets_in_with_the_defaults(make_relay: Any) -> None:
    """300 people behind one NAT address start a login within 5 minutes: with the default
    limits every one of them is sent to the provider."""
    with make_relay(peer="127.0.0.1") as relay:
        statuses = [login_from(relay, "192.0.2.80") for _ in range(300)]
    assert statuses == [302] * 300


def test_the_default_limits_refuse_a_flood_from_one_address(make_relay: Any, db: Engine) -> None:
    """2000 cookie-less /login requests from one address, as fast as it can: refused after a
    bounded number (the per-address pending cap), and the table holds no more than that."""
    with make_relay(peer="127.0.0.1") as relay:
        statuses = [login_from(relay, "203.0.113.9") for _ in range(2000)]
    assert statuses.count(302) == 500  # max_pending_per_address
    assert set(statuses[500:]) == {429}
    assert pending_rows(db) == 500


def test_forwarded_for_from_untrusted_peer_does_not_dodge_the_limit(
    make_relay: Any, db: Engine
) -> None:
    """A client that is not a trusted proxy cannot pose as many addresses with X-Forwarded-For."""
    with make_relay(limits={"login_rate": "5/minute"}) as relay:
        statuses = [login_from(relay, f"192.0.2.{i}") for i in range(20)]
    assert statuses.count(302) == 5
    assert pending_rows(db) == 5


def test_a_forged_forwarded_for_lands_left_of_the_real_client(make_relay: Any) -> None:
    """The trusted proxy appends the address it saw: whatever the client wrote to its left is
    ignored, so rotating it picks no new bucket."""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "5/minute"}) as relay:
        statuses = [login_from(relay, f"10.9.{i}.1, 203.0.113.7") for i in range(20)]
    assert statuses.count(302) == 5


def test_a_proxy_that_names_no_client_is_not_one_bucket(make_relay: Any, db: Engine) -> None:
    """A trusted proxy that sends neither X-Forwarded-For nor X-Real-IP: its clients are not
    counted as one client (which would lock all of them out together); the table's cap still
    bounds them."""
    limits = {"login_rate": "5/minute", "max_pending_per_address": 5, "max_pending": 50}
    with make_relay(peer="127.0.0.1", limits=limits) as relay:
        statuses = []
        for _ in range(80):
            relay.cookies.clear()
            statuses.append(relay.get("/login", headers=NAVIGATE).status_code)
    assert statuses == [302] * 80
    assert pending_rows(db) == 50


def test_x_real_ip_from_a_trusted_proxy_names_the_client(make_relay: Any) -> None:
    """A trusted proxy that sends X-Real-IP only: the limit counts that address."""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "3/minute"}) as relay:
        statuses = []
        for address in ["192.0.2.1"] * 5 + ["192.0.2.2"] * 2:
            relay.cookies.clear()
            response = relay.get("/login", headers={"X-Real-IP": address, **NAVIGATE})
            statuses.append(response.status_code)
    assert statuses == [302, 302, 302, 429, 429, 302, 302]


def test_pending_logins_per_address_hold_across_replicas(make_relay: Any, db: Engine) -> None:
    """Two relay processes (each with its own in-memory rate counters) on one database: the
    per-address pending cap is counted in the database, so it holds for both together."""
    limits = {"max_pending_per_address": 10}
    with (
        make_relay(peer="127.0.0.1", limits=limits) as one,
        make_relay(peer="127.0.0.1", limits=limits) as two,
    ):
        statuses = [login_from(relay, "203.0.113.5") for relay in (one, two) * 15]
    assert statuses.count(302) == 10
    assert pending_rows(db) == 10


def start(relay: Any, address: str) -> tuple[str, dict[str, str]]:
    """A fresh browser at ``address`` starts a login: its provider URL and its cookies."""
    relay.cookies.clear()
    started = relay.get("/login", params={"rd": "/"}, headers={"X-Forwarded-For": address})
    assert started.status_code == 302
    return started.headers["location"], dict(relay.cookies)


def finish(relay: Any, provider: TestProvider, login: tuple[str, dict[str, str]]) -> int:
    """The browser that started ``login`` comes back from the provider."""
    relay.cookies.clear()
    relay.cookies.update(login[1])
    return int(relay.get(callback_path(provider_redirect(provider, login[0]))).status_code)


def test_a_flood_over_many_addresses_does_not_evict_a_login_in_progress(
    make_relay: Any, provider: TestProvider, db: Engine, clock: Any
) -> None:
    """Forged addresses through the trusted proxy, one login each, fill max_pending: the
    newcomers are refused (none of them holds fewer than anyone else), and the login a person
    started before the flood still completes."""
    with make_relay(peer="127.0.0.1", limits={"max_pending": 5}) as relay:
        person = start(relay, "198.51.100.1")
        statuses = []
        for i in range(20):
            clock.advance(1)
            statuses.append(login_from(relay, f"192.0.2.{i}"))
            assert pending_rows(db) <= 5
        assert statuses == [302] * 4 + [429] * 16
        assert finish(relay, provider, person) == 302


def test_a_full_table_takes_from_the_client_holding_the_most(
    make_relay: Any, provider: TestProvider, db: Engine, clock: Any
) -> None:
    """One IPv6 /64 floods a full table: its own newest are refused; a newcomer from another
    address starts at the flooder's expense (its oldest goes), and the people in the middle
    of a login get in."""
    limits = {"max_pending": 5, "max_pending_per_address": 100}
    with make_relay(peer="127.0.0.1", limits=limits) as relay:
        first = start(relay, "198.51.100.1")
        flood = []
        for i in range(20):
            clock.advance(1)
            flood.append(login_from(relay, f"2001:db8:bad:1::{i + 1:x}"))
        assert flood == [302] * 4 + [429] * 16
        clock.advance(1)
        second = start(relay, "198.51.100.2")
        assert pending_rows(db) == 5
        assert finish(relay, provider, first) == 302
        assert finish(relay, provider, second) == 302


def test_one_ipv6_64_is_one_client_for_the_login_rate(make_relay: Any) -> None:
    """Addresses of one /64 share a rate bucket (one subscriber picks any of them at will);
    another /64 has its own."""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "10/minute"}) as relay:
        one = [login_from(relay, f"2001:db8:1:2::{i + 1:x}") for i in range(30)]
        other = login_from(relay, "2001:db8:1:3::1")
    assert one.count(302) == 10
    assert other == 302


def test_one_ipv6_64_is_one_client_for_the_pending_cap(make_relay: Any, db: Engine) -> None:
    """The live pending logins of a /64 are counted together, across its addresses."""
    with make_relay(peer="127.0.0.1", limits={"max_pending_per_address": 5}) as relay:
        statuses = [login_from(relay, f"2001:db8:1:2:{i + 1:x}::1") for i in range(30)]
    assert statuses.count(302) == 5
    assert pending_rows(db) == 5


def test_the_ipv6_prefix_is_configurable(make_relay: Any) -> None:
    """[limits] ipv6_prefix = 128 counts each IPv6 address alone; ipv4_prefix = 24 counts an
    IPv4 /24 as one client."""
    limits = {"login_rate": "2/minute", "ipv6_prefix": 128, "ipv4_prefix": 24}
    with make_relay(peer="127.0.0.1", limits=limits) as relay:
        six = [login_from(relay, f"2001:db8:1:2::{i + 1:x}") for i in range(5)]
        four = [login_from(relay, f"192.0.2.{i + 1}") for i in range(5)]
    assert six == [302] * 5
    assert four == [302, 302, 429, 429, 429]


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_bucket(address: str, bucket: str) -> None:
    """An address is counted as its network with the defaults: IPv4 alone, IPv6 by /64."""
    assert client_bucket(address) == bucket


def test_pending_cap_per_address_frees_up_as_logins_expire(make_relay: Any, clock: Any) -> None:
    """Expired pending rows do not count against the per-address cap, pruned or not."""
    with make_relay(peer="127.0.0.1", limits={"max_pending_per_address": 2}) as relay:
        assert [login_from(relay, "192.0.2.9") for _ in range(3)] == [302, 302, 429]
        clock.advance(601)  # pending_lifetime 10m
        assert login_from(relay, "192.0.2.9") == 302


def test_shared_storage_counts_once_for_all_replicas() -> None:
    """Two limiters on one Redis (two replicas) count together; in memory each counts alone."""
    prefix = "oidc-relay-test-" + uuid.uuid4().hex[:8]

    async def hits(storage: str) -> list[bool]:
        one = LoginLimiter("4/minute", storage, key_prefix=prefix)
        two = LoginLimiter("4/minute", storage, key_prefix=prefix)
        try:
            return [await limiter.allow("192.0.2.1") for limiter in (one, two) * 4]
        finally:
            await one.close()
            await two.close()

    assert asyncio.run(hits("redis://127.0.0.1:6379/0")).count(True) == 4
    assert asyncio.run(hits("memory://")).count(True) == 8


def test_an_unreachable_shared_storage_lets_logins_through() -> None:
    """A limiter whose Redis is down fails open (logged): the database caps still hold."""

    async def hits() -> list[bool]:
        limiter = LoginLimiter("1/minute", "redis://127.0.0.1:9/0")
        try:
            return [await limiter.allow("192.0.2.1") for _ in range(3)]
        finally:
            await limiter.close()

    assert asyncio.run(hits()) == [True, True, True]


def test_replicas_on_shared_storage_share_the_login_rate(make_relay: Any) -> None:
    """Two relay processes with [limits] storage_uri on the machine's Redis: one client gets
    login_rate in all, not login_rate from each."""
    client = (
        f"2001:db8:{uuid.uuid4().hex[:4]}::1"  # a fresh /64: new counters on a long-lived Redis
    )
    limits = {"login_rate": "6/minute", "storage_uri": "redis://127.0.0.1:6379/0"}
    with (
        make_relay(peer="127.0.0.1", limits=limits) as one,
        make_relay(peer="127.0.0.1", limits=limits) as two,
    ):
        statuses = [login_from(relay, client) for relay in (one, two) * 6]
    assert statuses.count(302) == 6
