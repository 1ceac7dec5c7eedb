"""Expiry at its exact edges, on a FakeClock: idle timeout and absolute lifetime (from the
session cache and from the table), what a touch extends, pending logins, and the cookies'
Max-Age against the server's own lifetimes. test_sessions.py has the expiry formula and the
UPDATE count per touch_interval; this file pins the boundaries (a second either side)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests.conftest import callback_path, check, count_statements, provider_redirect, sign_in
from tests.provider import TestProvider

COOKIE = "__Host-relay_session"
# The cache answers most checks before routing; with it off every check reads the table.
# Expiry must hold on both paths.
CACHE = pytest.mark.parametrize("cache", [{}, {"max_entries": 0}], ids=["cached", "uncached"])


def session_row(db: Engine) -> Any:
    with db.connect() as conn:
        return conn.execute(text("SELECT * FROM sessions WHERE status = 'active'")).one()


def max_age(response: Any, name: str) -> int:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    [value] = [a.split("=", 1)[1] for a in header.lower().split("; ") if a.startswith("max-age=")]
    return int(value)


@CACHE
def test_idle_timeout_is_valid_a_second_before_and_refused_at_it(
    make_relay: Any, provider: TestProvider, clock: Any, cache: dict[str, Any]
) -> None:
    """A session is valid idle_timeout - 1 s after its last touch and refused at exactly
    idle_timeout, whether the check is answered from the cache or the table."""
    session = {"idle_timeout": "30m", "touch_interval": "1m"}
    with make_relay(session=session, cache=cache) as relay:
        sign_in(relay, provider)
        clock.advance(1799)
        assert check(relay).status_code == 200  # and this check touches the session
        clock.advance(1799)
        assert check(relay).status_code == 200
        clock.advance(1800)  # exactly idle_timeout after the last touch
        assert check(relay).status_code == 401


@CACHE
def test_absolute_lifetime_refuses_a_session_active_every_minute(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine, cache: dict[str, Any]
) -> None:
    """A check every minute keeps the idle window open, yet the session is refused at exactly
    absolute_lifetime after sign-in (valid a second before)."""
    session = {"absolute_lifetime": "1h", "idle_timeout": "10m", "touch_interval": "1m"}
    with make_relay(session=session, cache=cache) as relay:
        sign_in(relay, provider)
        created = session_row(db).created_at
        for _ in range(59):
            clock.advance(60)
            assert check(relay).status_code == 200
        assert session_row(db).last_accessed_at == created + 3540
        clock.advance(59)
        assert check(relay).status_code == 200
        clock.advance(1)
        assert check(relay).status_code == 401


def test_a_written_touch_extends_the_idle_window(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """The check after touch_interval writes one UPDATE that moves last_accessed_at and
    expires_at on; the session then outlives its first idle window."""
    with make_relay(session={"idle_timeout": "5m", "touch_interval": "1m"}) as relay:
        sign_in(relay, provider)
        created = session_row(db).created_at
        assert session_row(db).expires_at == created + 300
        engine = relay.app.state.relay.db  # the engine and the hot statements
        with count_statements(engine, "UPDATE") as updates:
            clock.advance(60)
            assert check(relay).status_code == 200
            assert check(relay).status_code == 200
        assert len(updates) == 1
        row = session_row(db)
        assert (row.last_accessed_at, row.expires_at) == (created + 60, created + 360)
        clock.advance(299)  # created + 359: past the first window, within the new one
        assert check(relay).status_code == 200


def test_a_check_between_touches_does_not_extend_the_idle_window(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """Within touch_interval a check writes nothing, so it does not move expiry: the idle
    window runs from the last written touch (idleness is judged to within touch_interval)."""
    with make_relay(session={"idle_timeout": "5m", "touch_interval": "1m"}) as relay:
        sign_in(relay, provider)
        created = session_row(db).created_at
        engine = relay.app.state.relay.db  # the engine and the hot statements
        with count_statements(engine, "UPDATE") as updates:
            clock.advance(59)
            assert check(relay).status_code == 200
        assert updates == []
        assert session_row(db).expires_at == created + 300
        clock.advance(241)  # created + 300, 241 s after the last check
        assert check(relay).status_code == 401


def test_a_pending_login_expires_at_pending_lifetime(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """A /callback pending_lifetime - 1 s after /login completes; one at exactly
    pending_lifetime is refused with a 400 and no session. The login cookie's Max-Age is
    pending_lifetime."""
    with make_relay(session={"pending_lifetime": "5m"}) as relay:
        start = relay.get("/login")
        assert max_age(start, COOKIE + "_login") == 300
        clock.advance(299)
        done = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
        assert done.status_code == 302
        assert check(relay).status_code == 200
        relay.cookies.clear()
        start = relay.get("/login")
        clock.advance(300)
        late = relay.get(callback_path(provider_redirect(provider, start.headers["location"])))
        assert late.status_code == 400
        assert COOKIE not in relay.cookies
        assert check(relay).status_code == 401


def test_the_session_cookie_outlives_no_server_side_lifetime(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """The cookie's Max-Age is absolute_lifetime (an active user never loses it early); the
    server, not the browser, ends the session: the cookie is still sent after idle_timeout
    and is refused."""
    session = {"absolute_lifetime": "2h", "idle_timeout": "30m"}
    with make_relay(session=session) as relay:
        done = sign_in(relay, provider)
        assert max_age(done, COOKIE) == 7200
        cookie = relay.cookies[COOKIE]
        clock.advance(1800)
        response = relay.get("/auth", headers={"cookie": f"{COOKIE}={cookie}"})
        assert response.status_code == 401
