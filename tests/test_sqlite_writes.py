"""SQLite has one writer at a time: logins arriving together take turns instead of failing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from tests.conftest import ISSUER, PUBLIC_URL
from tests.provider import TestProvider

NAVIGATE = {"Accept": "text/html"}
SIGN_INS = 100


async def one_login(relay: TestClient, provider: TestProvider, address: str) -> list[int]:
    """A browser of its own, through the trusted proxy: /login, the provider, /callback."""
    relay_transport = httpx2.ASGITransport(app=relay.app, client=("127.0.0.1", 40000))
    provider_transport = httpx2.ASGITransport(app=provider.app)
    headers = {"X-Forwarded-For": address, **NAVIGATE}
    async with (
        httpx2.AsyncClient(transport=relay_transport, base_url=PUBLIC_URL) as browser,
        httpx2.AsyncClient(transport=provider_transport, base_url=ISSUER) as idp,
    ):
        start = await browser.get("/login", params={"rd": "/"}, headers=headers)
        if start.status_code != 302:
            return [start.status_code]
        back = await idp.get(start.headers["location"])
        done = await browser.get(back.headers["location"], headers=headers)
        return [start.status_code, done.status_code]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_burst_of_sign_ins_on_sqlite_all_succeed(make_relay: Any, provider: TestProvider) -> None:
    """100 browsers sign in at the same moment on SQLite (database.timeout 1s): every /login
    and every /callback succeeds, none a 503 for a database that was merely busy. (Before the
    writers took turns, SQLite's busy handler let some wait past the bound: in 4 runs of 4
    here, and 2-3 of ~600 logins with 32 browsers against `relay serve` on the defaults.)"""

    async def together(relay: TestClient) -> list[list[int]]:
        logins = (one_login(relay, provider, f"192.0.2.{i}") for i in range(SIGN_INS))
        return list(await asyncio.gather(*logins))

    with make_relay(peer="127.0.0.1", database={"timeout": "1s"}) as relay:
        assert relay.portal.call(together, relay) == [[302, 302]] * SIGN_INS
