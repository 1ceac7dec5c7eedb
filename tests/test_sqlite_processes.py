"""A `relay serve` on SQLite, the embedded default, and other processes writing the same file:
what they end (`relay sessions revoke`, a second relay's admin API, logout and back-channel
logout), the running relay stops accepting within the documented bound (1 second), though
it held the session in its cache; what they merely write costs its cache nothing.

Sessions are made by real logins at a test provider (tests/provider.py) served over a socket
in a thread of the test, as in tests/test_replicas.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.conftest import run_migrations
from tests.live import auth, logout, metric, relay_config, served_provider, sign_in
from tests.process import RELAY, RelayProcess
from tests.provider import TestProvider

BOUND = 1.0  # seconds: the documented bound (relay/store/sqlite_watch.py)
HITS = "relay_session_cache_hits_total"
MISSES = "relay_session_cache_misses_total"
TOKEN = "admin-token-for-the-sqlite-process-tests-0123456789"


@dataclass
class Setup:
    provider: TestProvider
    config: Path  # the running relay's, which `relay sessions revoke` is given too
    base: str  # the running relay, holding sessions in its cache
    other: str  # a second relay process on the same file
    http: httpx2.Client


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    run_migrations(url)  # before either starts: two self-migrations would race
    with ExitStack() as stack:
        provider = stack.enter_context(served_provider())
        config, base = relay_config(tmp_path, "a", url, issuer=provider.issuer)
        admin = f'[admin]\ntoken = "{TOKEN}"\n'
        config_b, other = relay_config(tmp_path, "b", url, issuer=provider.issuer, extra=admin)
        for path in (config, config_b):
            stack.enter_context(RelayProcess(path))
        http = stack.enter_context(httpx2.Client(timeout=10))
        yield Setup(provider, config, base, other, http)


def cached(s: Setup, cookie: str) -> None:
    """/auth answers 200 at the running relay, from its cache (the hit counter moves): what
    ends the session later is an invalidation, not a table read it was doing anyway."""
    assert auth(s.http, s.base, cookie) == 200
    before = metric(s.http, s.base, HITS)
    assert auth(s.http, s.base, cookie) == 200
    assert metric(s.http, s.base, HITS) == before + 1


def first_401(s: Setup, cookie: str, since: float) -> float:
    """Poll /auth at the running relay as fast as it answers until a 401; the seconds from
    ``since`` to it. Anything but 200 before it fails; so does no 401 within 3 x BOUND."""
    while True:
        status = auth(s.http, s.base, cookie)
        elapsed = time.monotonic() - since
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < 3 * BOUND, "the ended session still works"


def test_relay_sessions_revoke_reaches_the_running_relay_within_a_second(setup: Setup) -> None:
    """`relay sessions revoke --sub alice` in a process of its own: the running relay, which
    answered alice from its cache, answers 401 within 1 s of the command's exit; bob, signed
    in on the same file meanwhile, is still answered from the cache."""
    s = setup
    alice = sign_in(s.base, s.provider, "alice", "op-1")
    cached(s, alice)
    bob = sign_in(s.base, s.provider, "bob", "op-2")  # a write that ends nothing
    cached(s, bob)
    revoke = [RELAY, "sessions", "revoke", "--sub", "alice", "--config", str(s.config)]
    result = subprocess.run(revoke, capture_output=True, text=True, timeout=60, check=False)
    ended = time.monotonic()
    assert (result.returncode, result.stdout) == (0, "ended 1 session of alice\n"), result.stderr
    assert first_401(s, alice, ended) < BOUND
    misses = metric(s.http, s.base, MISSES)
    cached(s, bob)  # the revocation dropped alice only
    assert metric(s.http, s.base, MISSES) == misses


def test_what_a_second_relay_ends_reaches_the_running_relay_within_a_second(
    setup: Setup,
) -> None:
    """Another relay process on the same file ends sessions by its admin API, a logout and a
    back-channel logout: each stops working at the running relay within 1 s."""
    s = setup
    by_admin = sign_in(s.base, s.provider, "alice", "op-1")
    by_logout = sign_in(s.other, s.provider, "bob", "op-2")
    by_backchannel = sign_in(s.other, s.provider, "carol", "op-3")
    for cookie in (by_admin, by_logout, by_backchannel):
        cached(s, cookie)

    response = s.http.post(
        s.other + "/admin/sessions/revoke",
        json={"sub": "alice"},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert response.json() == {"ended": 1}, response.text
    assert first_401(s, by_admin, time.monotonic()) < BOUND

    logout(s.http, s.other, by_logout)
    assert first_401(s, by_logout, time.monotonic()) < BOUND

    s.provider.subject, s.provider.sid = "carol", "op-3"
    response = s.http.post(
        s.other + "/backchannel-logout", data={"logout_token": s.provider.logout_token()}
    )
    assert response.status_code == 200, response.text
    assert first_401(s, by_backchannel, time.monotonic()) < BOUND
