"""Session lifetimes on the hot path: touch throttling and the expiry formula."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.conftest import check, count_statements, sign_in
from tests.provider import TestProvider


def session_row(db: Engine) -> Any:
    with db.connect() as conn:
        return conn.execute(text("SELECT * FROM sessions WHERE status = 'active'")).one()


def test_touch_writes_at_most_once_per_interval(
    relay: TestClient, provider: TestProvider, clock: Any
) -> None:
    """Many /auth requests inside one touch_interval cost no UPDATE and, cached, no further
    SELECT than the first; the next interval costs one UPDATE."""
    sign_in(relay, provider)
    engine = relay.app.state.relay.db  # the engine and the hot statements
    with count_statements(engine, "UPDATE") as updates, count_statements(engine, "SELECT") as reads:
        for _ in range(20):
            assert check(relay).status_code == 200
        assert updates == []
        assert len(reads) <= 1  # the first lookup at most; the rest come from the cache
        clock.advance(61)  # touch_interval default 60s
        for _ in range(20):
            assert check(relay).status_code == 200
        assert len(updates) == 1
        clock.advance(30)
        check(relay)
        assert len(updates) == 1
        clock.advance(31)
        check(relay)
        assert len(updates) == 2


def test_idle_timeout_slides_but_absolute_lifetime_caps(
    make_relay: Any, provider: TestProvider, clock: Any, db: Engine
) -> None:
    """expires_at = min(created_at + absolute_lifetime, last_accessed_at + idle_timeout)."""
    session = {"absolute_lifetime": "2h", "idle_timeout": "30m", "touch_interval": "1m"}
    with make_relay(session=session) as relay:
        sign_in(relay, provider)
        created = session_row(db).created_at
        assert session_row(db).expires_at == created + 1800
        for _ in range(4):  # active every 25 minutes: the idle timeout never runs out...
            clock.advance(1500)
            assert check(relay).status_code == 200
        row = session_row(db)
        assert row.last_accessed_at == created + 6000
        assert row.expires_at == created + 7200  # ...but the absolute lifetime caps it
        clock.advance(1199)
        assert check(relay).status_code == 200
        clock.advance(2)
        assert check(relay).status_code == 401


def test_idle_session_expires(make_relay: Any, provider: TestProvider, clock: Any) -> None:
    """A session untouched for longer than idle_timeout is refused."""
    with make_relay(session={"idle_timeout": "30m"}) as relay:
        sign_in(relay, provider)
        clock.advance(1799)
        assert check(relay).status_code == 200
        clock.advance(1799)  # 29m59s after the last touch
        assert check(relay).status_code == 200
        clock.advance(1801)
        assert check(relay).status_code == 401
